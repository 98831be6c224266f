//! How the vocabulary's enums are spelled as text: one `as_str`, `ALL`,
//! `Display` and `FromStr` per enum, generated from one list of spellings so
//! the text written to rows, printed and parsed back cannot drift apart. The
//! spellings equal the serde (`snake_case`) names.

/// A name read from a row, a file or the command line that is not one of the
/// known spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {entity} {value:?} (expected one of: {expected})")]
pub struct UnknownName {
    /// What was being named, e.g. `task state` or `executor`.
    pub entity: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// `spelled!(Type, "entity", [Variant => "spelling", ...])`.
macro_rules! spelled {
    ($ty:ty, $entity:literal,
     [$first:ident => $first_text:literal $(, $variant:ident => $text:literal)* $(,)?]) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: [$ty; [$first_text $(, $text)*].len()] =
                [<$ty>::$first $(, <$ty>::$variant)*];

            /// The one spelling used in rows, JSON and printed text.
            pub fn as_str(self) -> &'static str {
                match self {
                    <$ty>::$first => $first_text,
                    $(<$ty>::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::model::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $first_text => Ok(<$ty>::$first),
                    $($text => Ok(<$ty>::$variant),)*
                    _ => Err($crate::model::UnknownName {
                        entity: $entity,
                        value: s.to_string(),
                        expected: concat!($first_text $(, ", ", $text)*),
                    }),
                }
            }
        }
    };
}

pub(crate) use spelled;
