//! `.tar.gz` packages for deployments, including hostile ones.

use std::io::Write;

use anyhow::{Result, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;

/// A gzipped tar of regular files, with entry names written verbatim.
///
/// The tar crate refuses to write names like `../x`; this writes the raw header field so tests
/// can hand woa-deploy the archives an attacker would.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut archive = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (name, content) in files {
        let mut header = tar::Header::new_old();
        let field = &mut header.as_old_mut().name;
        ensure!(name.len() < field.len(), "entry name {name} is too long");
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        archive.append(&header, *content)?;
    }
    let mut gz = archive.into_inner()?;
    gz.flush()?;
    Ok(gz.finish()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A failed unwrap is a failed test.

    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    #[test]
    fn entry_names_are_kept_verbatim() {
        let bytes =
            tar_gz(&[("compose.yaml", b"services: {}\n"), ("../escape.txt", b"x")]).unwrap();
        let mut archive = tar::Archive::new(GzDecoder::new(bytes.as_slice()));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            seen.push((name, content));
        }
        assert_eq!(
            seen,
            [
                ("compose.yaml".to_owned(), "services: {}\n".to_owned()),
                ("../escape.txt".to_owned(), "x".to_owned())
            ]
        );
    }
}
