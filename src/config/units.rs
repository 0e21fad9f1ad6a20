//! Human-readable units for hardening.yaml: durations (`30s`, `5m`, `7d`) and byte sizes (`64KiB`).
//!
//! Both serialize back to the same text form, so `config-schema` defaults and the generated reference
//! read the way an operator writes them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written like `30s`, `5m`, `1h30m` or `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn mins(mins: u64) -> Self {
        Self::secs(mins * 60)
    }

    pub const fn hours(hours: u64) -> Self {
        Self::secs(hours * 3600)
    }

    pub const fn days(days: u64) -> Self {
        Self::secs(days * 86_400)
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    /// In the largest unit that divides it evenly (`90d`, not `2months 29days …`), keeping seconds
    /// under two minutes (`60s`, `90s`), so defaults read the way an operator writes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (value, unit) = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ]
        .into_iter()
        .find(|(size, _)| {
            ms >= *size && ms.is_multiple_of(*size) && (*size != 60_000 || ms >= 120_000)
        })
        .map_or((ms, "ms"), |(size, unit)| (ms / size, unit));
        write!(f, "{value}{unit}")
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| format!("invalid duration `{s}` ({e}); write it like `30s`, `5m` or `7d`"))
    }
}

/// A size in bytes written like `64KiB`, `1MiB` or `512` (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole KiB/MiB print without a fraction so a default round-trips exactly.
        match self.0 {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{}MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{}KiB", n >> 10),
            n => write!(f, "{n}B"),
        }
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Self(b.as_u64()))
            .map_err(|e| format!("invalid size `{s}` ({e}); write it like `64KiB` or `1MiB`"))
    }
}

macro_rules! text_unit {
    ($ty:ty, $name:literal, $format:literal, $pattern:literal, $example:literal, $number:expr) => {
        // `#[validate(range(min = …, max = …))]` works on it as on a number.
        impl validator::ValidateRange<$ty> for $ty {
            fn greater_than(&self, max: $ty) -> Option<bool> {
                Some(*self > max)
            }

            fn less_than(&self, min: $ty) -> Option<bool> {
                Some(*self < min)
            }
        }

        /// A bound in the JSON Schema is the bare-number form of the unit (seconds, bytes): the
        /// `minimum`/`maximum` a validator applies to a value written as a number.
        impl From<$ty> for serde_json::Value {
            fn from(value: $ty) -> Self {
                let number: fn($ty) -> u64 = $number;
                number(value).into()
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {} like `{}`", $name, $example)
                    }

                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }

                    // A bare number is seconds for a duration, bytes for a size.
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_str(&format!("{v}{}", if $name == "Duration" { "s" } else { "B" }))
                    }
                }
                d.deserialize_any(Text)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }

            // Inline, so that each field's range lands next to its type.
            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": ["string", "integer"],
                    "format": $format,
                    "minimum": 0,
                    "pattern": $pattern,
                    "examples": [$example],
                })
            }
        }
    };
}

text_unit!(
    Duration,
    "Duration",
    "duration",
    r"^\s*(\d+\s*[a-zµ]+\s*)+$",
    "30s",
    |d| d.0.as_secs()
);
text_unit!(
    ByteSize,
    "ByteSize",
    "byte-size",
    r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$",
    "64KiB",
    |b| b.0
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_round_trip_through_their_text_form() {
        for text in ["30s", "60s", "90s", "5m", "1h", "7d", "90d", "250ms", "0ms"] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!("2m".parse::<Duration>().unwrap().to_string(), "2m");
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize::kib(64));
        assert_eq!(ByteSize::kib(64).to_string(), "64KiB");
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().to_string(), "1MiB");
    }

    #[test]
    fn nonsense_units_are_rejected_with_an_example() {
        let err = "30 parsecs".parse::<Duration>().unwrap_err();
        assert!(err.contains("30s"), "{err}");
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
