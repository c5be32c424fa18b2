//! The product-name rule: what customers see of a deal must be there to see.

use crate::shared::status::Violations;

use super::MAX_PRODUCT_NAME_CHARS;

/// Validates a product name for `field`: trimmed, 1 to [`MAX_PRODUCT_NAME_CHARS`] characters, no
/// control characters, at least one visible one.
pub(super) fn product_name(field: &str, name: &str, violations: &mut Violations) -> Option<String> {
    let trimmed = name.trim();
    let chars = trimmed.chars().count();
    if trimmed.is_empty() {
        violations.add(field, "must not be blank");
    } else if chars > MAX_PRODUCT_NAME_CHARS {
        violations.add(field, format!("must be at most {MAX_PRODUCT_NAME_CHARS} characters"));
    } else if trimmed.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    } else if !trimmed.chars().any(is_visible) {
        violations.add(field, "must contain a visible character");
    } else {
        return Some(trimmed.to_owned());
    }
    None
}

/// Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt, unchanged from
/// Unicode 15 to 17): zero-width spaces and joiners, bidi marks, fillers, variation selectors, tags.
/// Renderers draw nothing for them.
pub const DEFAULT_IGNORABLE: [(char, char); 17] = [
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Whether `c` shows as something: neither White_Space, nor Default_Ignorable_Code_Point, nor a
/// control character. A name of none of these would show customers a deal without a name.
pub fn is_visible(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !DEFAULT_IGNORABLE.iter().any(|&(first, last)| (first..=last).contains(&c))
}
