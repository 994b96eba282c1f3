//! Compose variable interpolation, written by hand: the grammar is small, and a hand-written
//! expander guarantees that only the variables the deployment gives are ever consulted.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml_ng::Value;

/// Why a string could not be interpolated.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum InterpolationError {
    /// A `${NAME?message}` or `${NAME:?message}` form whose variable has no value.
    Required {
        /// The variable.
        variable: String,
        /// The message the file gives for it (already interpolated).
        message: String,
    },
    /// The string is not a valid template.
    Syntax(String),
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpolationError::Required { variable, message } if message.is_empty() => {
                write!(f, "required variable {variable} is missing a value")
            }
            InterpolationError::Required { variable, message } => {
                write!(
                    f,
                    "required variable {variable} is missing a value: {message}"
                )
            }
            InterpolationError::Syntax(reason) => write!(f, "invalid interpolation: {reason}"),
        }
    }
}

/// Expands `$NAME`, `${NAME}`, the `:-`, `-`, `:?`, `?`, `:+` and `+` forms and `$$` in
/// `template` (a `$` before anything else is kept), like `NAME=value docker compose up` with exactly `variables` set. An unset
/// variable without a default expands to the empty string. Defaults and alternatives may
/// themselves hold templates; they are only expanded when used.
pub(super) fn interpolate(
    template: &str,
    variables: &BTreeMap<String, String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let close = closing_brace(braced).ok_or_else(|| {
                InterpolationError::Syntax(format!("`${{` without a closing `}}` in `{template}`"))
            })?;
            out.push_str(&expand_braced(&braced[..close], variables)?);
            rest = &braced[close + 1..];
        } else {
            // A `$` that starts no name stays as written, as in Compose v2 (`^x$`, `$(id -g)`).
            let length = name_length(after);
            match length {
                0 => out.push('$'),
                _ => out.push_str(variables.get(&after[..length]).map_or("", String::as_str)),
            }
            rest = &after[length..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The byte index of the `}` that closes a `${`, given the text after it. Nested `${...}` and
/// `$$` inside a default are skipped over.
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut index = 0;
    while index < bytes.len() {
        match (bytes[index], bytes.get(index + 1)) {
            (b'$', Some(b'$')) => index += 2,
            (b'$', Some(b'{')) => {
                depth += 1;
                index += 2;
            }
            (b'}', _) if depth == 0 => return Some(index),
            (b'}', _) => {
                depth -= 1;
                index += 1;
            }
            _ => index += 1,
        }
    }
    None
}

/// Length in bytes of the variable name at the start of `text` (`[A-Za-z_][A-Za-z0-9_]*`).
fn name_length(text: &str) -> usize {
    let mut length = 0;
    for (index, byte) in text.bytes().enumerate() {
        let allowed =
            byte == b'_' || byte.is_ascii_alphabetic() || (index > 0 && byte.is_ascii_digit());
        if !allowed {
            break;
        }
        length = index + 1;
    }
    length
}

/// Expands the inside of one `${...}`.
fn expand_braced(
    expression: &str,
    variables: &BTreeMap<String, String>,
) -> Result<String, InterpolationError> {
    let length = name_length(expression);
    if length == 0 {
        return Err(InterpolationError::Syntax(format!(
            "`${{{expression}}}` does not start with a variable name"
        )));
    }
    let name = &expression[..length];
    let operation = &expression[length..];
    let value = variables.get(name).map(String::as_str);
    let non_empty = value.filter(|value| !value.is_empty());
    let required = |message: &str| -> Result<String, InterpolationError> {
        Err(InterpolationError::Required {
            variable: name.to_owned(),
            message: interpolate(message, variables)?,
        })
    };
    if operation.is_empty() {
        Ok(value.unwrap_or_default().to_owned())
    } else if let Some(default) = operation.strip_prefix(":-") {
        non_empty.map_or_else(|| interpolate(default, variables), |v| Ok(v.to_owned()))
    } else if let Some(default) = operation.strip_prefix('-') {
        value.map_or_else(|| interpolate(default, variables), |v| Ok(v.to_owned()))
    } else if let Some(message) = operation.strip_prefix(":?") {
        non_empty.map_or_else(|| required(message), |v| Ok(v.to_owned()))
    } else if let Some(message) = operation.strip_prefix('?') {
        value.map_or_else(|| required(message), |v| Ok(v.to_owned()))
    } else if let Some(alternative) = operation.strip_prefix(":+") {
        non_empty.map_or(Ok(String::new()), |_| interpolate(alternative, variables))
    } else if let Some(alternative) = operation.strip_prefix('+') {
        value.map_or(Ok(String::new()), |_| interpolate(alternative, variables))
    } else {
        Err(InterpolationError::Syntax(format!(
            "`${{{expression}}}`: expected `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+` after {name}"
        )))
    }
}

/// Interpolates every string value of a parsed compose tree in place; keys stay as written.
/// Errors name the key path of the value, e.g. `services.web.ports[0]: ...`.
pub(super) fn interpolate_tree(
    value: &mut Value,
    variables: &BTreeMap<String, String>,
) -> Result<(), String> {
    walk(value, &mut String::new(), variables)
}

fn walk(
    value: &mut Value,
    path: &mut String,
    variables: &BTreeMap<String, String>,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            *text = interpolate(text, variables).map_err(|error| format!("{path}: {error}"))?;
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                walk(item, path, variables)?;
                path.truncate(length);
            }
        }
        Value::Mapping(mapping) => {
            for (key, item) in mapping.iter_mut() {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key_text(key));
                walk(item, path, variables)?;
                path.truncate(length);
            }
        }
        // Compose's own tags (`!reset`, `!override`) only matter when merging several files,
        // which this device never does; anything tagged is rejected rather than misread.
        Value::Tagged(tagged) => {
            return Err(format!("{path}: YAML tag {} is not supported", tagged.tag));
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A mapping key as it appears in a key path.
fn key_text(key: &Value) -> String {
    match key {
        Value::String(text) => text.clone(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables() -> BTreeMap<String, String> {
        [
            ("NAME", "web"),
            ("EMPTY", ""),
            ("PORT", "8080"),
            ("B", "bee"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn expands_every_form() {
        let cases = [
            ("plain text", "plain text"),
            ("", ""),
            ("$NAME", "web"),
            ("${NAME}", "web"),
            ("pre-$NAME-post", "pre-web-post"),
            ("$NAME.local", "web.local"),
            ("${NAME}x", "webx"),
            ("$NAMEx", ""),
            ("${PORT}:80", "8080:80"),
            ("$UNSET", ""),
            ("${UNSET}", ""),
            ("a${UNSET}b", "ab"),
            // :- uses the default when unset or empty, - only when unset.
            ("${UNSET:-dflt}", "dflt"),
            ("${EMPTY:-dflt}", "dflt"),
            ("${NAME:-dflt}", "web"),
            ("${UNSET-dflt}", "dflt"),
            ("${EMPTY-dflt}", ""),
            ("${NAME-dflt}", "web"),
            ("${UNSET:-}", ""),
            ("${UNSET:-a b:c}", "a b:c"),
            // :+ gives the alternative when set and non-empty, + when set at all.
            ("${NAME:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${UNSET:+alt}", ""),
            ("${NAME+alt}", "alt"),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            // ? forms pass set values through.
            ("${NAME:?must be set}", "web"),
            ("${NAME?must be set}", "web"),
            ("${EMPTY?must be set}", ""),
            // $$ is a literal dollar and never starts a variable.
            ("$$", "$"),
            ("$$NAME", "$NAME"),
            ("$${NAME}", "${NAME}"),
            ("cost: $$5", "cost: $5"),
            ("$$$NAME", "$web"),
            // Nested templates in defaults and alternatives.
            ("${UNSET:-${B}}", "bee"),
            ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
            ("${UNSET:-$B}", "bee"),
            ("${NAME:+${B}-x}", "bee-x"),
            ("${UNSET:-${B}}/tail", "bee/tail"),
            ("${UNSET:-a$$b}", "a$b"),
            // A default is not evaluated when the variable is set.
            ("${NAME:-${MISSING:?never}}", "web"),
            ("_${NAME}_", "_web_"),
            ("${_UNDER}", ""),
            ("ünïcode $NAME ✓", "ünïcode web ✓"),
            // A `$` that starts no variable is kept, as Compose v2 keeps it.
            ("$", "$"),
            ("a $ b", "a $ b"),
            ("^https?://x(:[0-9]+)?$", "^https?://x(:[0-9]+)?$"),
            ("app:$(id -g)", "app:$(id -g)"),
            ("$1$NAME", "$1web"),
        ];
        let variables = variables();
        for (template, expected) in cases {
            assert_eq!(
                interpolate(template, &variables).as_deref(),
                Ok(expected),
                "template {template:?}"
            );
        }
    }

    #[test]
    fn required_variables_report_name_and_message() {
        let cases = [
            (
                "${MISSING:?set the password}",
                "MISSING",
                "set the password",
            ),
            ("${MISSING?set it}", "MISSING", "set it"),
            ("${EMPTY:?cannot be empty}", "EMPTY", "cannot be empty"),
            ("${MISSING?}", "MISSING", ""),
            ("${MISSING:?need ${NAME}}", "MISSING", "need web"),
            ("${UNSET:-${INNER:?inner}}", "INNER", "inner"),
        ];
        let variables = variables();
        for (template, variable, message) in cases {
            assert_eq!(
                interpolate(template, &variables),
                Err(InterpolationError::Required {
                    variable: variable.to_owned(),
                    message: message.to_owned()
                }),
                "template {template:?}"
            );
        }
        let text = interpolate("${DB_PASSWORD:?set it}", &variables)
            .err()
            .map(|error| error.to_string());
        assert_eq!(
            text.as_deref(),
            Some("required variable DB_PASSWORD is missing a value: set it")
        );
    }

    #[test]
    fn malformed_templates_are_errors() {
        let variables = variables();
        for template in [
            "${NAME",
            "${",
            "${}",
            "${1ABC}",
            "${NAME:x}",
            "${NAME!}",
            "${UNSET:-${B}",
        ] {
            assert!(
                matches!(
                    interpolate(template, &variables),
                    Err(InterpolationError::Syntax(_))
                ),
                "template {template:?}"
            );
        }
    }

    #[test]
    fn tree_interpolation_touches_values_only_and_names_the_key() {
        let variables = variables();
        let mut tree: Value = serde_yaml_ng::from_str(
            "services:\n  $NAME:\n    image: img:${PORT}\n    ports: [\"${PORT}:80\", 81]\n",
        )
        .expect("yaml");
        interpolate_tree(&mut tree, &variables).expect("interpolates");
        let expected: Value = serde_yaml_ng::from_str(
            "services:\n  $NAME:\n    image: img:8080\n    ports: [\"8080:80\", 81]\n",
        )
        .expect("yaml");
        assert_eq!(tree, expected);

        let mut tree: Value = serde_yaml_ng::from_str(
            "services:\n  web:\n    environment:\n      - A=${X:?give X}\n",
        )
        .expect("yaml");
        assert_eq!(
            interpolate_tree(&mut tree, &variables),
            Err(
                "services.web.environment[0]: required variable X is missing a value: give X"
                    .to_owned()
            )
        );
    }

    #[test]
    fn tags_are_rejected_with_their_path() {
        let mut tree: Value =
            serde_yaml_ng::from_str("services:\n  web:\n    ports: !reset []\n").expect("yaml");
        let error = interpolate_tree(&mut tree, &BTreeMap::new()).err();
        assert_eq!(
            error.as_deref(),
            Some("services.web.ports: YAML tag !reset is not supported")
        );
    }
}
