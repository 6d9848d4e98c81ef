//! Settings spelled as one of a few words (`--price-policy adverse-only`,
//! `journal_sync = "normal"`).

/// `FromStr` and `Display` for an enum of unit variants spelled as words:
/// `words!(PricePolicy, "price policy", Symmetric => "symmetric", ...)`.
/// An unknown word is an error naming what was expected.
macro_rules! words {
    ($type:ident, $what:literal, $($variant:ident => $word:literal),+ $(,)?) => {
        impl std::str::FromStr for $type {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    other => Err($crate::words::unknown($what, other, &[$($word),+])),
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $(Self::$variant => $word,)+
                })
            }
        }
    };
}
pub(crate) use words;

/// `unknown price policy "x": expected symmetric or adverse-only`.
pub(crate) fn unknown(what: &str, input: &str, words: &[&str]) -> String {
    let expected = match words {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    };
    format!("unknown {what} {input:?}: expected {expected}")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Speed {
        Slow,
        Fast,
        Instant,
    }

    super::words!(Speed, "speed", Slow => "slow", Fast => "fast", Instant => "instant");

    #[test]
    fn words_parse_and_print_both_ways() {
        for speed in [Speed::Slow, Speed::Fast, Speed::Instant] {
            assert_eq!(speed.to_string().parse::<Speed>(), Ok(speed));
        }
        assert_eq!(
            "warp".parse::<Speed>(),
            Err("unknown speed \"warp\": expected slow, fast or instant".to_owned())
        );
    }
}
