//! Polling and downtime windows: when the sync service may talk to the orchestrator.
//!
//! A window is either weekly (`Mon-Fri 06:00-18:00 Europe/Berlin`) or a one-off span of civil
//! time (`2026-12-24T18:00/2026-12-26T08:00 Europe/Berlin`). Weekly windows are evaluated in the
//! civil (wall clock) time of their zone, so across daylight saving changes they follow the clock
//! on the wall: a window inside the skipped hour of a spring-forward day is shorter (or empty),
//! one inside the repeated hour of a fall-back day is longer. One-off windows are fixed instants;
//! a civil time that does not exist or exists twice resolves like jiff's `compatible` rule (the
//! later instant in a gap, the earlier one in a fold).

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize, Serializer};

/// How far ahead [`Schedule::next_allowed`] looks for weekly windows; a day more than a week so
/// every weekly boundary is seen even when a daylight saving change shifts it by an hour.
const HORIZON: SignedDuration = SignedDuration::from_hours(8 * 24);

/// Minutes in a civil day; `24:00` as a window end.
const DAY_MINUTES: u16 = 24 * 60;

/// Civil date-time layout of one-off windows.
const DATE_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M";

/// Three-letter day names, indexed by days since Monday.
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Full day names, indexed by days since Monday.
const FULL_DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Zone of windows that name none.
const DEFAULT_ZONE: &str = "UTC";

/// One polling or downtime window, parsed from its config text.
///
/// Start instants are inside the window, end instants are not.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct Window {
    when: When,
    /// Zone name as written in canonical text (`UTC` when the config names none).
    zone_name: String,
    zone: TimeZone,
}

/// The recurring or one-off part of a window.
#[derive(Clone, Debug, PartialEq)]
enum When {
    Weekly(Weekly),
    Once(Once),
}

/// A daily time range on a set of weekdays.
#[derive(Clone, Debug, PartialEq)]
struct Weekly {
    days: DaySet,
    /// Minutes after midnight at which the window opens, `0..1440`.
    start: u16,
    /// Minutes after midnight at which the window closes, `1..=1440`; before `start` when the
    /// window runs past midnight into the next day.
    end: u16,
}

/// A single span between two civil date-times of the window's zone.
#[derive(Clone, Debug, PartialEq)]
struct Once {
    start: DateTime,
    end: DateTime,
    /// `start` resolved in the window's zone.
    start_at: Timestamp,
    /// `end` resolved in the window's zone.
    end_at: Timestamp,
}

/// Set of weekdays, bit `i` for `i` days after Monday.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DaySet(u8);

impl DaySet {
    const ALL: DaySet = DaySet(0b111_1111);

    fn contains(self, day: u8) -> bool {
        self.0 & (1 << day) != 0
    }

    fn insert(&mut self, day: u8) {
        self.0 |= 1 << day;
    }
}

/// Why the text of a window could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("window {0:?}: {1}")]
pub struct WindowError(String, Problem);

/// What exactly was wrong with a window's text.
#[derive(Debug, PartialEq, thiserror::Error)]
enum Problem {
    #[error("empty (expected `DAYS HH:MM-HH:MM [ZONE]` or `START/END [ZONE]`)")]
    Empty,
    #[error("unknown day {0:?} (expected Mon..Sun, *, daily)")]
    UnknownDay(String),
    #[error("missing time range after the days (expected HH:MM-HH:MM)")]
    MissingTimes,
    #[error("invalid time range {0:?} (expected HH:MM-HH:MM)")]
    BadTimeRange(String),
    #[error("invalid time {0:?} (expected HH:MM from 00:00 to 23:59, or 24:00 as end)")]
    BadTime(String),
    #[error("start and end are both {0} (expected a non-empty range)")]
    EmptyRange(String),
    #[error("unknown time zone {0:?} (expected an IANA name such as Europe/Berlin)")]
    UnknownZone(String),
    #[error("unexpected {0:?} after the time zone (expected nothing)")]
    Trailing(String),
    #[error("invalid date-time {0:?} (expected YYYY-MM-DDTHH:MM)")]
    BadDateTime(String),
    #[error("{0} does not exist in the time zone")]
    Unrepresentable(String),
    #[error("end {end} is not after start {start}")]
    EndNotAfterStart { start: String, end: String },
}

impl Window {
    /// Whether the instant `t` lies in this window (start inclusive, end exclusive).
    pub fn contains(&self, t: Timestamp) -> bool {
        match &self.when {
            When::Weekly(weekly) => {
                let local = self.zone.to_datetime(t);
                weekly.covers(day_index(local.date().weekday()), minute_of_day(local))
            }
            When::Once(once) => once.start_at <= t && t < once.end_at,
        }
    }

    /// Instants at which this window may open or close, pushed onto `out`.
    ///
    /// For weekly windows these are all civil boundary times of the zone's days around
    /// `from..=until`, resolved to every instant they occur at, plus the zone's offset changes
    /// (a window also opens or closes when the clock jumps over its boundary). Extra candidates
    /// are harmless; a missing one would make [`Schedule::next_allowed`] skip an opening.
    fn boundaries(&self, from: Timestamp, until: Timestamp, out: &mut Vec<Timestamp>) {
        match &self.when {
            When::Weekly(weekly) => {
                let first = self.zone.to_datetime(from).date();
                let first = first.yesterday().unwrap_or(first);
                let last = self.zone.to_datetime(until).date();
                let last = last.tomorrow().unwrap_or(last);
                let mut date = first;
                loop {
                    // The day set needs no boundary of its own at midnight: a window either
                    // ends by 24:00 or, running past midnight, stays open into the next day.
                    for minute in [weekly.start, weekly.end % DAY_MINUTES] {
                        self.push_civil(date, minute, out);
                    }
                    match date.tomorrow() {
                        Ok(next) if date < last => date = next,
                        _ => break,
                    }
                }
                out.extend(
                    self.zone
                        .following(from)
                        .map(|transition| transition.timestamp())
                        .take_while(|at| *at <= until),
                );
            }
            When::Once(once) => out.extend([once.start_at, once.end_at]),
        }
    }

    /// Pushes every instant at which the civil time `minute` after midnight of `date` occurs.
    fn push_civil(&self, date: Date, minute: u16, out: &mut Vec<Timestamp>) {
        let Some(time) = civil_time(minute) else {
            return;
        };
        let ambiguous = self.zone.to_ambiguous_timestamp(date.to_datetime(time));
        // In a fold both instants show this clock time; in a gap neither does, but the offset
        // change itself is a candidate anyway.
        out.extend(ambiguous.earlier().ok());
        out.extend(ambiguous.later().ok());
    }

    /// The instants bounding a one-off window.
    fn once_bounds(&self) -> Option<[Timestamp; 2]> {
        match &self.when {
            When::Weekly(_) => None,
            When::Once(once) => Some([once.start_at, once.end_at]),
        }
    }
}

impl Weekly {
    /// Whether the civil time `minute` after midnight on day `day` (days since Monday) is
    /// inside the window.
    fn covers(&self, day: u8, minute: u16) -> bool {
        if self.start < self.end {
            self.days.contains(day) && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight the window belongs to the day it started on.
            let previous = (day + 6) % 7;
            (self.days.contains(day) && minute >= self.start)
                || (self.days.contains(previous) && minute < self.end)
        }
    }
}

/// Days since Monday.
fn day_index(day: Weekday) -> u8 {
    // Always in 0..7.
    day.to_monday_zero_offset().unsigned_abs()
}

/// Whole minutes since midnight of a civil time; seconds are below window resolution.
fn minute_of_day(local: DateTime) -> u16 {
    u16::from(local.hour().unsigned_abs()) * 60 + u16::from(local.minute().unsigned_abs())
}

/// The civil time `minute` after midnight, for `minute < 1440`.
fn civil_time(minute: u16) -> Option<Time> {
    let hour = i8::try_from(minute / 60).ok()?;
    let minute = i8::try_from(minute % 60).ok()?;
    Time::new(hour, minute, 0, 0).ok()
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text).map_err(|problem| WindowError(text.to_owned(), problem))
    }
}

impl TryFrom<String> for Window {
    type Error = WindowError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        // The zone follows from its name; comparing names also treats an omitted zone and an
        // explicit `UTC` alike.
        self.when == other.when && self.zone_name == other.zone_name
    }
}

fn parse(text: &str) -> Result<Window, Problem> {
    let mut fields = text.split_whitespace();
    let first = fields.next().ok_or(Problem::Empty)?;
    if first.contains('/') {
        let zone = parse_zone(fields.next())?;
        reject_trailing(fields)?;
        let once = parse_once(first, &zone.1)?;
        return Ok(Window {
            when: When::Once(once),
            zone_name: zone.0,
            zone: zone.1,
        });
    }

    // Allow a space after the commas of a day list ("Mon, Wed").
    let mut days_text = first.to_owned();
    let mut next = fields.next();
    while days_text.ends_with(',') {
        let Some(more) = next else { break };
        days_text.push_str(more);
        next = fields.next();
    }
    let days = parse_days(&days_text)?;
    let times = next.ok_or(Problem::MissingTimes)?;
    let (start_text, end_text) = times
        .split_once('-')
        .ok_or_else(|| Problem::BadTimeRange(times.to_owned()))?;
    let start = parse_time(start_text, false)?;
    let end = parse_time(end_text, true)?;
    if start == end {
        return Err(Problem::EmptyRange(start_text.to_owned()));
    }
    let zone = parse_zone(fields.next())?;
    reject_trailing(fields)?;
    Ok(Window {
        when: When::Weekly(Weekly { days, start, end }),
        zone_name: zone.0,
        zone: zone.1,
    })
}

/// Parses `Mon`, `Mon-Fri`, `Fri-Mon`, `Mon,Wed-Fri`, `*` or `daily`.
fn parse_days(text: &str) -> Result<DaySet, Problem> {
    let mut days = DaySet(0);
    for item in text.split(',') {
        if item == "*" || item.eq_ignore_ascii_case("daily") {
            days = DaySet::ALL;
        } else if let Some((from, to)) = item.split_once('-') {
            let (mut day, to) = (parse_day(from)?, parse_day(to)?);
            // Ranges may wrap around the end of the week.
            days.insert(day);
            while day != to {
                day = (day + 1) % 7;
                days.insert(day);
            }
        } else {
            days.insert(parse_day(item)?);
        }
    }
    Ok(days)
}

/// Parses an English day name, three-letter or full, in any case.
fn parse_day(text: &str) -> Result<u8, Problem> {
    (0u8..)
        .zip(DAY_NAMES.iter().zip(FULL_DAY_NAMES))
        .find(|(_, (short, full))| {
            text.eq_ignore_ascii_case(short) || text.eq_ignore_ascii_case(full)
        })
        .map(|(index, _)| index)
        .ok_or_else(|| Problem::UnknownDay(text.to_owned()))
}

/// Parses `HH:MM` into minutes after midnight; `24:00` only as the end of a range.
fn parse_time(text: &str, is_end: bool) -> Result<u16, Problem> {
    let bad = || Problem::BadTime(text.to_owned());
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    let digits = |s: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(hours, 1..=2) || !digits(minutes, 2..=2) {
        return Err(bad());
    }
    let hours: u16 = hours.parse().map_err(|_| bad())?;
    let minutes: u16 = minutes.parse().map_err(|_| bad())?;
    let value = hours * 60 + minutes;
    if minutes >= 60 || value > DAY_MINUTES || (value == DAY_MINUTES && !is_end) {
        return Err(bad());
    }
    Ok(value)
}

/// Looks up the zone named by the optional last field, UTC when there is none.
fn parse_zone(name: Option<&str>) -> Result<(String, TimeZone), Problem> {
    let Some(name) = name else {
        return Ok((DEFAULT_ZONE.to_owned(), TimeZone::UTC));
    };
    let zone = TimeZone::get(name).map_err(|_| Problem::UnknownZone(name.to_owned()))?;
    // The database spells names canonically ("europe/berlin" becomes "Europe/Berlin").
    let canonical = zone.iana_name().unwrap_or(name).to_owned();
    Ok((canonical, zone))
}

fn reject_trailing<'a>(mut fields: impl Iterator<Item = &'a str>) -> Result<(), Problem> {
    match fields.next() {
        Some(extra) => Err(Problem::Trailing(extra.to_owned())),
        None => Ok(()),
    }
}

/// Parses `YYYY-MM-DDTHH:MM/YYYY-MM-DDTHH:MM` in `zone`.
fn parse_once(text: &str, zone: &TimeZone) -> Result<Once, Problem> {
    let (start_text, end_text) = text
        .split_once('/')
        .ok_or_else(|| Problem::BadDateTime(text.to_owned()))?;
    let civil = |s: &str| {
        DateTime::strptime(DATE_TIME_FORMAT, s).map_err(|_| Problem::BadDateTime(s.to_owned()))
    };
    let (start, end) = (civil(start_text)?, civil(end_text)?);
    let instant = |dt: DateTime, s: &str| {
        zone.to_timestamp(dt)
            .map_err(|_| Problem::Unrepresentable(s.to_owned()))
    };
    let (start_at, end_at) = (instant(start, start_text)?, instant(end, end_text)?);
    if end_at <= start_at {
        return Err(Problem::EndNotAfterStart {
            start: start_text.to_owned(),
            end: end_text.to_owned(),
        });
    }
    Ok(Once {
        start,
        end,
        start_at,
        end_at,
    })
}

impl fmt::Display for Window {
    /// Canonical text: days as Monday-first ranges, times as `HH:MM`, the zone unless UTC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.when {
            When::Weekly(weekly) => {
                write_days(f, weekly.days)?;
                write!(
                    f,
                    " {:02}:{:02}-{:02}:{:02}",
                    weekly.start / 60,
                    weekly.start % 60,
                    weekly.end / 60,
                    weekly.end % 60
                )?;
            }
            When::Once(once) => write!(
                f,
                "{}/{}",
                once.start.strftime(DATE_TIME_FORMAT),
                once.end.strftime(DATE_TIME_FORMAT)
            )?,
        }
        if self.zone_name != DEFAULT_ZONE {
            write!(f, " {}", self.zone_name)?;
        }
        Ok(())
    }
}

/// Writes a day set as `*` or comma-separated runs of consecutive days (`Mon-Fri`, `Sat`).
fn write_days(f: &mut fmt::Formatter<'_>, days: DaySet) -> fmt::Result {
    if days == DaySet::ALL {
        return f.write_str("*");
    }
    // Start at Monday, or earlier when a run wraps over the week's end (`Fri-Mon`).
    let mut first = 0u8;
    while days.contains((first + 6) % 7) && days.contains(first) {
        first = (first + 6) % 7;
    }
    let mut separator = "";
    let mut offset = 0u8;
    while offset < 7 {
        let day = (first + offset) % 7;
        if !days.contains(day) {
            offset += 1;
            continue;
        }
        let mut run = 1u8;
        while offset + run < 7 && days.contains((first + offset + run) % 7) {
            run += 1;
        }
        let last = (day + run - 1) % 7;
        f.write_str(separator)?;
        f.write_str(DAY_NAMES[usize::from(day)])?;
        if run > 1 {
            write!(f, "-{}", DAY_NAMES[usize::from(last)])?;
        }
        separator = ",";
        offset += run;
    }
    Ok(())
}

/// When requests to the orchestrator are allowed: inside polling windows, outside downtime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    polling: Vec<Window>,
    downtime: Vec<Window>,
}

impl Schedule {
    /// A schedule from polling windows (none: always) and downtime windows (none: never).
    pub fn new(polling: Vec<Window>, downtime: Vec<Window>) -> Schedule {
        Schedule { polling, downtime }
    }

    /// Requests may be made at `t`: inside some polling window (or no polling windows
    /// configured) and inside no downtime window.
    pub fn allows(&self, t: Timestamp) -> bool {
        (self.polling.is_empty() || self.polling.iter().any(|w| w.contains(t)))
            && !self.in_downtime(t)
    }

    /// Whether `t` lies inside some downtime window.
    pub fn in_downtime(&self, t: Timestamp) -> bool {
        self.downtime.iter().any(|w| w.contains(t))
    }

    /// Earliest instant `>= t` at which [`Schedule::allows`] holds; `None` if there is none
    /// within the next 8 days (and no one-off window later).
    ///
    /// Whether requests are allowed only changes where some window opens or closes, so only
    /// those boundary instants are checked rather than every minute.
    pub fn next_allowed(&self, t: Timestamp) -> Option<Timestamp> {
        if self.allows(t) {
            return Some(t);
        }
        let windows = || self.polling.iter().chain(&self.downtime);
        // Weekly windows repeat, so a horizon after `t` and after every later one-off boundary
        // covers every instant at which the outcome can change for the first time.
        let mut seeds = vec![t];
        seeds.extend(
            windows()
                .filter_map(Window::once_bounds)
                .flatten()
                .filter(|at| *at > t),
        );
        let mut candidates = Vec::new();
        for seed in seeds {
            let until = seed.checked_add(HORIZON).unwrap_or(Timestamp::MAX);
            for window in windows() {
                window.boundaries(seed, until, &mut candidates);
            }
        }
        candidates.retain(|at| *at > t);
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().find(|at| self.allows(*at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(text: &str) -> Window {
        match text.parse() {
            Ok(window) => window,
            Err(error) => panic!("{error}"),
        }
    }

    fn problem(text: &str) -> Problem {
        match text.parse::<Window>() {
            Ok(window) => panic!("{text:?} parsed as {window:?}"),
            Err(WindowError(reported, problem)) => {
                assert_eq!(reported, text);
                problem
            }
        }
    }

    fn at(text: &str) -> Timestamp {
        match text.parse() {
            Ok(t) => t,
            Err(error) => panic!("{text}: {error}"),
        }
    }

    fn schedule(polling: &[&str], downtime: &[&str]) -> Schedule {
        Schedule::new(
            polling.iter().map(|w| window(w)).collect(),
            downtime.iter().map(|w| window(w)).collect(),
        )
    }

    fn weekly(text: &str) -> Weekly {
        match window(text).when {
            When::Weekly(weekly) => weekly,
            When::Once(once) => panic!("{text:?} is one-off: {once:?}"),
        }
    }

    /// Bits for the given days since Monday.
    fn days(list: &[u8]) -> DaySet {
        let mut set = DaySet(0);
        for day in list {
            set.insert(*day);
        }
        set
    }

    #[test]
    fn parses_day_forms() {
        let cases: &[(&str, &[u8])] = &[
            ("Mon 06:00-18:00", &[0]),
            ("sunday 06:00-18:00", &[6]),
            ("MON-fri 06:00-18:00", &[0, 1, 2, 3, 4]),
            ("Fri-Mon 06:00-18:00", &[4, 5, 6, 0]),
            ("Sun-Sun 06:00-18:00", &[6]),
            ("Mon,Wed,Fri 06:00-18:00", &[0, 2, 4]),
            ("Mon, Wed,  Thursday-Friday 06:00-18:00", &[0, 2, 3, 4]),
            ("Sat-Sun,Tue 06:00-18:00", &[5, 6, 1]),
            ("* 06:00-18:00", &[0, 1, 2, 3, 4, 5, 6]),
            ("Daily 06:00-18:00", &[0, 1, 2, 3, 4, 5, 6]),
        ];
        for (text, expected) in cases {
            assert_eq!(weekly(text).days, days(expected), "{text}");
        }
    }

    #[test]
    fn parses_times_and_zones() {
        let w = window("Mon-Fri 06:00-18:00 Europe/Berlin");
        assert_eq!(w.zone_name, "Europe/Berlin");
        assert_eq!(
            w.when,
            When::Weekly(Weekly {
                days: days(&[0, 1, 2, 3, 4]),
                start: 360,
                end: 1080
            })
        );
        assert_eq!(window("Mon 06:00-18:00").zone_name, "UTC");
        assert_eq!(
            window("Mon 06:00-18:00 europe/berlin").zone_name,
            "Europe/Berlin"
        );

        let whole_day = weekly("Sun 00:00-24:00");
        assert_eq!((whole_day.start, whole_day.end), (0, 1440));
        let overnight = weekly("Fri 22:00-06:00");
        assert_eq!((overnight.start, overnight.end), (1320, 360));
        let short_hour = weekly("Tue 7:05-9:30");
        assert_eq!((short_hour.start, short_hour.end), (425, 570));
    }

    #[test]
    fn parses_one_off_windows() {
        let w = window("2026-12-24T18:00/2026-12-26T08:00 Europe/Berlin");
        assert_eq!(
            w.once_bounds(),
            Some([at("2026-12-24T17:00Z"), at("2026-12-26T07:00Z")])
        );
        let utc = window("2026-07-01T00:00/2026-07-01T00:30");
        assert_eq!(utc.zone_name, "UTC");
        assert_eq!(
            utc.once_bounds(),
            Some([at("2026-07-01T00:00Z"), at("2026-07-01T00:30Z")])
        );
    }

    #[test]
    fn reports_every_parse_error() {
        let cases = [
            ("", Problem::Empty),
            ("   ", Problem::Empty),
            ("Mon-Fry 06:00-18:00", Problem::UnknownDay("Fry".into())),
            ("Mo 06:00-18:00", Problem::UnknownDay("Mo".into())),
            ("Mon,,Tue 06:00-18:00", Problem::UnknownDay("".into())),
            ("Mon- 06:00-18:00", Problem::UnknownDay("".into())),
            ("*-Fri 06:00-18:00", Problem::UnknownDay("*".into())),
            ("06:00-18:00", Problem::UnknownDay("06:00".into())),
            ("Mon", Problem::MissingTimes),
            ("Mon,", Problem::UnknownDay("".into())),
            ("Mon 06:00", Problem::BadTimeRange("06:00".into())),
            ("Mon 06:00-", Problem::BadTime("".into())),
            ("Mon 25:00-26:00", Problem::BadTime("25:00".into())),
            ("Mon 06:60-07:00", Problem::BadTime("06:60".into())),
            ("Mon 06:0-07:00", Problem::BadTime("06:0".into())),
            ("Mon 006:00-07:00", Problem::BadTime("006:00".into())),
            ("Mon +6:00-07:00", Problem::BadTime("+6:00".into())),
            ("Mon 24:00-06:00", Problem::BadTime("24:00".into())),
            ("Mon 06:00-24:01", Problem::BadTime("24:01".into())),
            ("Mon 0600-0700", Problem::BadTime("0600".into())),
            ("Mon 06:00-06:00", Problem::EmptyRange("06:00".into())),
            ("Mon 00:00-00:00", Problem::EmptyRange("00:00".into())),
            (
                "Mon 06:00-18:00 Europe/Berln",
                Problem::UnknownZone("Europe/Berln".into()),
            ),
            (
                "Mon 06:00-18:00 UTC extra",
                Problem::Trailing("extra".into()),
            ),
            (
                "2026-12-24/2026-12-26",
                Problem::BadDateTime("2026-12-24".into()),
            ),
            ("2026-12-24T18:00/", Problem::BadDateTime("".into())),
            (
                "2026-13-24T18:00/2026-12-26T08:00",
                Problem::BadDateTime("2026-13-24T18:00".into()),
            ),
            (
                "2026-12-24T18:00:00/2026-12-26T08:00",
                Problem::BadDateTime("2026-12-24T18:00:00".into()),
            ),
            (
                "2026-12-24T18:00/2026-12-26T08:00/2026-12-27T08:00",
                Problem::BadDateTime("2026-12-26T08:00/2026-12-27T08:00".into()),
            ),
            (
                "2026-12-24T18:00/2026-12-26T08:00 Mars/Olympus",
                Problem::UnknownZone("Mars/Olympus".into()),
            ),
            (
                "2026-12-24T18:00/2026-12-26T08:00 UTC more",
                Problem::Trailing("more".into()),
            ),
            (
                "2026-12-26T08:00/2026-12-24T18:00",
                Problem::EndNotAfterStart {
                    start: "2026-12-26T08:00".into(),
                    end: "2026-12-24T18:00".into(),
                },
            ),
            (
                "2026-12-24T18:00/2026-12-24T18:00",
                Problem::EndNotAfterStart {
                    start: "2026-12-24T18:00".into(),
                    end: "2026-12-24T18:00".into(),
                },
            ),
            // Beyond the last representable instant.
            (
                "9999-12-31T00:00/9999-12-31T01:00",
                Problem::Unrepresentable("9999-12-31T00:00".into()),
            ),
            // 02:30 does not exist on that day and resolves to 03:30, after 03:15.
            (
                "2026-03-29T02:30/2026-03-29T03:15 Europe/Berlin",
                Problem::EndNotAfterStart {
                    start: "2026-03-29T02:30".into(),
                    end: "2026-03-29T03:15".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(problem(text), expected, "{text:?}");
        }
    }

    #[test]
    fn error_message_names_text_and_expectation() {
        let error = "Mon-Fry 06:00-18:00"
            .parse::<Window>()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                r#"window "Mon-Fry 06:00-18:00": unknown day "Fry" (expected Mon..Sun, *, daily)"#
            )
        );
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases = [
            (
                "mon-FRI 6:00-18:00 europe/berlin",
                "Mon-Fri 06:00-18:00 Europe/Berlin",
            ),
            ("Sat 08:00-12:00 UTC", "Sat 08:00-12:00"),
            ("sunday 00:00-24:00", "Sun 00:00-24:00"),
            ("daily 22:00-06:00", "* 22:00-06:00"),
            ("Mon,Tue,Wed,Thu,Fri,Sat,Sun 01:00-02:00", "* 01:00-02:00"),
            ("Fri-Mon 10:00-11:00", "Fri-Mon 10:00-11:00"),
            ("Sun,Mon,Wed 10:00-11:00", "Sun-Mon,Wed 10:00-11:00"),
            ("Wed,Mon,Fri 10:00-11:00", "Mon,Wed,Fri 10:00-11:00"),
            ("Tue-Thu,Sat 10:00-11:00", "Tue-Thu,Sat 10:00-11:00"),
            ("Mon-Sat 10:00-11:00", "Mon-Sat 10:00-11:00"),
            ("Tue-Mon 10:00-11:00", "* 10:00-11:00"),
            (
                "2026-12-24T18:00/2026-12-26T08:00   Europe/Berlin",
                "2026-12-24T18:00/2026-12-26T08:00 Europe/Berlin",
            ),
            (
                "2026-01-01T00:00/2026-01-02T00:00",
                "2026-01-01T00:00/2026-01-02T00:00",
            ),
        ];
        for (text, canonical) in cases {
            let parsed = window(text);
            assert_eq!(parsed.to_string(), canonical, "{text:?}");
            assert_eq!(window(canonical), parsed, "{canonical:?}");
            assert_eq!(window(canonical).to_string(), canonical);
        }
        // Every day set survives the round trip.
        for bits in 1..=0b111_1111u8 {
            let w = Window {
                when: When::Weekly(Weekly {
                    days: DaySet(bits),
                    start: 60,
                    end: 120,
                }),
                zone_name: DEFAULT_ZONE.to_owned(),
                zone: TimeZone::UTC,
            };
            assert_eq!(window(&w.to_string()), w, "{w}");
        }
    }

    #[test]
    fn deserializes_from_strings() {
        let parsed: Vec<Window> =
            serde_json::from_str(r#"["Mon-Fri 06:00-18:00 Europe/Berlin", "Sun 00:00-24:00"]"#)
                .map_err(|e| e.to_string())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed,
            [
                window("Mon-Fri 06:00-18:00 Europe/Berlin"),
                window("Sun 00:00-24:00")
            ]
        );
        let error = serde_json::from_str::<Window>(r#""Mon 18:00-18:00""#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("start and end are both 18:00"), "{error}");
    }

    #[test]
    fn contains_start_but_not_end() {
        // 2026-07-06 is a Monday.
        let w = window("Mon 06:00-18:00");
        assert!(!w.contains(at("2026-07-06T05:59:59Z")));
        assert!(w.contains(at("2026-07-06T06:00Z")));
        assert!(w.contains(at("2026-07-06T17:59:59.999Z")));
        assert!(!w.contains(at("2026-07-06T18:00Z")));
        assert!(!w.contains(at("2026-07-07T06:00Z")));
        assert!(w.contains(at("2026-07-13T12:00Z")));

        let whole_day = window("Sun 00:00-24:00");
        assert!(!whole_day.contains(at("2026-07-04T23:59:59Z")));
        assert!(whole_day.contains(at("2026-07-05T00:00Z")));
        assert!(whole_day.contains(at("2026-07-05T23:59:59Z")));
        assert!(!whole_day.contains(at("2026-07-06T00:00Z")));
    }

    #[test]
    fn overnight_window_belongs_to_its_start_day() {
        // 2026-07-10 is a Friday.
        let w = window("Fri 22:00-06:00");
        assert!(
            !w.contains(at("2026-07-10T05:00Z")),
            "Friday early morning is Thursday's"
        );
        assert!(!w.contains(at("2026-07-10T21:59Z")));
        assert!(w.contains(at("2026-07-10T22:00Z")));
        assert!(w.contains(at("2026-07-11T00:00Z")));
        assert!(w.contains(at("2026-07-11T05:59Z")));
        assert!(!w.contains(at("2026-07-11T06:00Z")));
        assert!(
            !w.contains(at("2026-07-11T22:00Z")),
            "Saturday night is not in the window"
        );

        // Sunday night wraps into Monday, across the end of the week.
        let sunday = window("Sun 23:00-01:00");
        assert!(sunday.contains(at("2026-07-12T23:30Z")));
        assert!(sunday.contains(at("2026-07-13T00:30Z")));
        assert!(!sunday.contains(at("2026-07-13T01:00Z")));
        assert!(!sunday.contains(at("2026-07-13T23:30Z")));
    }

    #[test]
    fn wrapping_day_range_covers_the_weekend() {
        let w = window("Fri-Mon 10:00-11:00");
        // 2026-07-06 Monday to 2026-07-12 Sunday.
        let inside: Vec<bool> = (6..=12)
            .map(|day| w.contains(at(&format!("2026-07-{day:02}T10:30Z"))))
            .collect();
        assert_eq!(inside, [true, false, false, false, true, true, true]);
    }

    #[test]
    fn zone_shifts_the_window() {
        let berlin = window("Mon-Fri 06:00-18:00 Europe/Berlin");
        let utc = window("Mon-Fri 06:00-18:00");
        // Summer: CEST, UTC+2.
        assert!(berlin.contains(at("2026-07-06T04:00Z")));
        assert!(!utc.contains(at("2026-07-06T04:00Z")));
        assert!(!berlin.contains(at("2026-07-06T16:00Z")));
        assert!(utc.contains(at("2026-07-06T16:00Z")));
        // Winter: CET, UTC+1.
        assert!(!berlin.contains(at("2026-01-05T04:59Z")));
        assert!(berlin.contains(at("2026-01-05T05:00Z")));
        assert!(!berlin.contains(at("2026-01-05T17:00Z")));
        // Friday 23:30 UTC is already Saturday in Berlin.
        assert!(!berlin.contains(at("2026-07-10T23:30Z")));
        assert!(window("Sat 00:00-02:00 Europe/Berlin").contains(at("2026-07-10T23:30Z")));
    }

    #[test]
    fn spring_forward_shortens_windows() {
        // 2026-03-29, Sunday: in Berlin 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let skipped = window("Sun 02:00-03:00 Europe/Berlin");
        for minute in 0..=24 * 60 {
            let t = at("2026-03-28T23:00Z") + SignedDuration::from_mins(minute);
            assert!(!skipped.contains(t), "{t}");
        }
        let straddling = window("Sun 01:30-03:30 Europe/Berlin");
        assert!(!straddling.contains(at("2026-03-29T00:29Z")));
        assert!(straddling.contains(at("2026-03-29T00:30Z")), "01:30 CET");
        assert!(straddling.contains(at("2026-03-29T01:00Z")), "03:00 CEST");
        assert!(straddling.contains(at("2026-03-29T01:29Z")));
        assert!(!straddling.contains(at("2026-03-29T01:30Z")), "03:30 CEST");
    }

    #[test]
    fn fall_back_lengthens_windows() {
        // 2026-10-25, Sunday: in Berlin 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        let repeated = window("Sun 02:00-03:00 Europe/Berlin");
        assert!(!repeated.contains(at("2026-10-24T23:59Z")));
        assert!(repeated.contains(at("2026-10-25T00:00Z")), "02:00 CEST");
        assert!(repeated.contains(at("2026-10-25T00:59Z")));
        assert!(repeated.contains(at("2026-10-25T01:00Z")), "02:00 CET");
        assert!(repeated.contains(at("2026-10-25T01:59Z")));
        assert!(!repeated.contains(at("2026-10-25T02:00Z")), "03:00 CET");
    }

    #[test]
    fn one_off_window_contains_its_span() {
        let w = window("2026-12-24T18:00/2026-12-26T08:00 Europe/Berlin");
        assert!(!w.contains(at("2026-12-24T16:59Z")));
        assert!(w.contains(at("2026-12-24T17:00Z")));
        assert!(w.contains(at("2026-12-26T06:59Z")));
        assert!(!w.contains(at("2026-12-26T07:00Z")));
        // Across a fall-back night the span is an hour longer than on the wall clock.
        let fold = window("2026-10-25T01:00/2026-10-25T04:00 Europe/Berlin");
        assert_eq!(
            fold.once_bounds(),
            Some([at("2026-10-24T23:00Z"), at("2026-10-25T03:00Z")])
        );
    }

    #[test]
    fn downtime_overrides_polling() {
        let s = schedule(
            &["Mon-Fri 06:00-18:00 Europe/Berlin"],
            &[
                "2026-12-24T18:00/2026-12-26T08:00 Europe/Berlin",
                "Wed 12:00-13:00 Europe/Berlin",
            ],
        );
        // 2026-12-23 is a Wednesday.
        assert!(s.allows(at("2026-12-23T10:59Z")));
        assert!(!s.allows(at("2026-12-23T11:00Z")));
        assert!(s.in_downtime(at("2026-12-23T11:00Z")));
        assert!(s.allows(at("2026-12-23T12:00Z")));
        assert!(s.allows(at("2026-12-24T16:59Z")));
        assert!(
            !s.allows(at("2026-12-25T10:00Z")),
            "Christmas Friday is downtime"
        );
        assert!(
            !s.allows(at("2026-12-26T10:00Z")),
            "Saturday is outside polling"
        );
        assert!(!s.in_downtime(at("2026-12-26T10:00Z")));

        let no_polling = schedule(&[], &["Sun 00:00-24:00"]);
        assert!(no_polling.allows(at("2026-07-11T12:00Z")));
        assert!(!no_polling.allows(at("2026-07-12T12:00Z")));
        assert!(Schedule::default().allows(at("2026-07-12T12:00Z")));
    }

    #[test]
    fn next_allowed_is_now_when_allowed() {
        let s = schedule(&["Mon-Fri 06:00-18:00"], &[]);
        let t = at("2026-07-06T12:34:56.789Z");
        assert_eq!(s.next_allowed(t), Some(t));
    }

    #[test]
    fn next_allowed_skips_the_weekend() {
        let s = schedule(&["Mon-Fri 06:00-18:00 Europe/Berlin"], &["Sun 00:00-24:00"]);
        // Friday 2026-07-10 18:00 CEST until Monday 06:00 CEST.
        assert_eq!(
            s.next_allowed(at("2026-07-10T16:00Z")),
            Some(at("2026-07-13T04:00Z"))
        );
        assert_eq!(
            s.next_allowed(at("2026-07-11T12:00:30Z")),
            Some(at("2026-07-13T04:00Z"))
        );
        // Early on a weekday, the same morning.
        assert_eq!(
            s.next_allowed(at("2026-07-08T00:00Z")),
            Some(at("2026-07-08T04:00Z"))
        );

        let saturday = schedule(
            &[
                "Mon-Fri 06:00-18:00 Europe/Berlin",
                "Sat 08:00-12:00 Europe/Berlin",
            ],
            &["Sun 00:00-24:00"],
        );
        assert_eq!(
            saturday.next_allowed(at("2026-07-10T16:00Z")),
            Some(at("2026-07-11T06:00Z"))
        );
    }

    #[test]
    fn next_allowed_waits_out_downtime() {
        let s = schedule(&[], &["2026-12-24T18:00/2026-12-26T08:00 Europe/Berlin"]);
        assert_eq!(
            s.next_allowed(at("2026-12-25T10:00Z")),
            Some(at("2026-12-26T07:00Z"))
        );

        // Downtime ends on a Saturday; polling resumes on Monday.
        let s = schedule(
            &["Mon-Fri 06:00-18:00 Europe/Berlin"],
            &["2026-12-24T18:00/2026-12-26T08:00 Europe/Berlin"],
        );
        assert_eq!(
            s.next_allowed(at("2026-12-24T17:30Z")),
            Some(at("2026-12-28T05:00Z"))
        );

        // Weekly downtime inside a polling window.
        let s = schedule(&["* 00:00-24:00"], &["Mon 01:00-02:00", "Mon 02:00-03:30"]);
        assert_eq!(
            s.next_allowed(at("2026-07-06T01:15Z")),
            Some(at("2026-07-06T03:30Z"))
        );
    }

    #[test]
    fn next_allowed_looks_past_long_one_off_windows() {
        // Downtime longer than the weekly horizon; 2026-08-20 is a Thursday.
        let s = schedule(&["Mon 09:00-10:00"], &["2026-08-01T00:00/2026-08-20T00:00"]);
        assert_eq!(
            s.next_allowed(at("2026-08-01T00:00Z")),
            Some(at("2026-08-24T09:00Z"))
        );
        // A one-off polling window months ahead.
        let s = schedule(&["2027-01-01T00:00/2027-01-02T00:00 Europe/Berlin"], &[]);
        assert_eq!(
            s.next_allowed(at("2026-06-01T00:00Z")),
            Some(at("2026-12-31T23:00Z"))
        );
        assert_eq!(s.next_allowed(at("2027-01-02T00:00Z")), None);
    }

    #[test]
    fn next_allowed_is_none_when_never_allowed() {
        assert_eq!(
            schedule(&[], &["* 00:00-24:00"]).next_allowed(at("2026-07-06T00:00Z")),
            None
        );
        assert_eq!(
            schedule(&["Mon 06:00-18:00"], &["Mon 00:00-24:00"])
                .next_allowed(at("2026-07-06T00:00Z")),
            None
        );
        // The end of representable time is no reason to panic.
        let end_of_time = Timestamp::MAX;
        assert_eq!(
            schedule(&["Mon 06:00-07:00"], &[]).next_allowed(end_of_time),
            None
        );
        let late = schedule(&["* 00:00-24:00 Pacific/Kiritimati"], &["Mon 06:00-07:00"]);
        assert_eq!(late.next_allowed(end_of_time), Some(end_of_time));
    }

    #[test]
    fn next_allowed_across_daylight_saving_changes() {
        // The skipped hour never opens; the next Sunday's does (02:00 CEST = 00:00 UTC).
        let skipped = schedule(&["Sun 02:00-03:00 Europe/Berlin"], &[]);
        assert_eq!(
            skipped.next_allowed(at("2026-03-28T12:00Z")),
            Some(at("2026-04-05T00:00Z"))
        );
        // A window starting inside the skipped hour opens when the clock jumps to 03:00.
        let jump = schedule(&["Sun 02:30-04:00 Europe/Berlin"], &[]);
        assert_eq!(
            jump.next_allowed(at("2026-03-28T12:00Z")),
            Some(at("2026-03-29T01:00Z"))
        );
        // After a fall-back, downtime in the repeated hour lasts both repetitions.
        let fold = schedule(&[], &["Sun 02:00-03:00 Europe/Berlin"]);
        assert_eq!(
            fold.next_allowed(at("2026-10-25T00:30Z")),
            Some(at("2026-10-25T02:00Z"))
        );
        // A window in the repeated hour opens a second time, an hour after the first.
        let twice = schedule(&["Sun 02:30-02:45 Europe/Berlin"], &[]);
        assert_eq!(
            twice.next_allowed(at("2026-10-25T00:00Z")),
            Some(at("2026-10-25T00:30Z"))
        );
        assert_eq!(
            twice.next_allowed(at("2026-10-25T00:45Z")),
            Some(at("2026-10-25T01:30Z"))
        );
    }

    /// The boundary search agrees with checking every minute.
    #[test]
    fn next_allowed_matches_minute_scan() {
        let schedules = [
            schedule(
                &["Sun 02:30-04:00 Europe/Berlin"],
                &["Sat 05:00-05:10 Europe/Berlin"],
            ),
            schedule(
                &[
                    "Mon-Fri 06:00-18:00 Europe/Berlin",
                    "Sat 08:00-12:00 Europe/Berlin",
                ],
                &["Sun 00:00-24:00"],
            ),
            schedule(
                &["Fri 22:00-06:00 America/New_York"],
                &["Sat 01:00-02:00 America/New_York"],
            ),
            schedule(
                &[
                    "Sun 01:30-03:30 Europe/Berlin",
                    "Sun 02:00-02:30 Europe/Berlin",
                ],
                &[],
            ),
            schedule(
                &[
                    "Sun 02:00-03:00 Europe/Berlin",
                    "Wed 23:59-00:01 Asia/Kolkata",
                ],
                &["Sun 02:15-02:45 Europe/Berlin"],
            ),
            schedule(
                &["Tue,Thu 12:00-12:01 Australia/Lord_Howe"],
                &["2026-10-06T12:00/2026-10-06T12:01 Australia/Lord_Howe"],
            ),
            schedule(&[], &["* 00:00-23:59", "2026-07-07T23:59/2026-07-08T23:59"]),
        ];
        let starts = [
            "2026-03-26T09:17Z",
            "2026-03-28T23:45Z",
            "2026-07-07T12:00Z",
            "2026-10-01T00:00Z",
            "2026-10-24T22:10Z",
            "2026-10-25T00:50Z",
            "2026-10-31T03:00Z",
        ];
        for (index, s) in schedules.iter().enumerate() {
            for start in starts {
                let start = at(start);
                let scanned = (0..9 * 24 * 60)
                    .map(|minute| start + SignedDuration::from_mins(minute))
                    .find(|t| s.allows(*t));
                assert_eq!(
                    s.next_allowed(start),
                    scanned,
                    "schedule {index} from {start}"
                );
            }
        }
    }
}
