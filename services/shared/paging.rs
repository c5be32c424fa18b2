//! Pagination (AIP-158): page sizes and opaque keyset page tokens.
//!
//! A token names the last row of the previous page by its sort key (an instant and an id) and the
//! filter it was made for, so a token cannot be replayed against another filter.

use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

use super::status::Violations;

/// The page size when a request leaves it unset.
pub const DEFAULT_PAGE_SIZE: i64 = 20;
/// The largest page; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: i64 = 100;

/// The number of rows to return for a requested `page_size`.
pub fn page_size(field: &str, requested: i32, violations: &mut Violations) -> i64 {
    match requested {
        ..0 => {
            violations.add(field, "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        0 => DEFAULT_PAGE_SIZE,
        size => i64::from(size).min(MAX_PAGE_SIZE),
    }
}

/// Cuts `rows`, read with a limit of `page_size + 1`, to one page: the row past the page only says
/// that another page follows. Returns the token of that next page (empty when none follows), made
/// from the page's last row by `cursor_of` and bound to `filter`.
pub fn cut_page<T>(rows: &mut Vec<T>, page_size: i64, filter: &str, cursor_of: impl Fn(&T) -> Cursor) -> String {
    let page_size = usize::try_from(page_size).unwrap_or(0);
    if rows.len() <= page_size {
        return String::new();
    }
    rows.truncate(page_size);
    rows.last().map(|last| cursor_of(last).to_token(filter)).unwrap_or_default()
}

/// Where the previous page ended, in the list's sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The sort instant of the last row returned.
    pub at: DateTime<Utc>,
    /// The id of the last row returned, which breaks ties between equal instants.
    pub id: Uuid,
}

impl Cursor {
    /// The token for the page after this cursor, bound to `filter`.
    pub fn to_token(self, filter: &str) -> String {
        // The filter goes last: it is free text (a customer id) and may itself hold a `|`.
        let plain = format!("v1|{}|{}|{filter}", self.at.timestamp_micros(), self.id);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut token = String::with_capacity(plain.len() * 2);
        for byte in plain.bytes() {
            token.push(char::from(HEX[usize::from(byte >> 4)]));
            token.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        token
    }

    /// Reads `token` for `field`: `None` for the first page, or the cursor if the token was made for
    /// `filter`.
    pub fn from_token(field: &str, token: &str, filter: &str, violations: &mut Violations) -> Option<Self> {
        if token.is_empty() {
            return None;
        }
        let cursor = decode_hex(token).and_then(|plain| {
            let mut parts = plain.splitn(4, '|');
            let (Some("v1"), Some(micros), Some(id), Some(token_filter)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            if token_filter != filter {
                return None;
            }
            // Only instants the database can store: a forged token must not reach the query.
            let at = DateTime::from_timestamp_micros(micros.parse().ok()?)
                .filter(|at| (1970..=9999).contains(&at.year()))?;
            Some(Self { at, id: Uuid::try_parse(id).ok()? })
        });
        if cursor.is_none() {
            violations.add(field, "is not a page token of this request; start again without one");
        }
        cursor
    }
}

fn decode_hex(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > 512 {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(token.get(index..index + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_cut_at_its_size_and_the_row_past_it_only_says_more_follow() {
        let at = |seconds| Cursor { at: DateTime::from_timestamp(seconds, 0).unwrap(), id: Uuid::nil() };
        let mut three = vec![1, 2, 3];
        let token = cut_page(&mut three, 2, "live", |&row| at(row));
        assert_eq!(three, [1, 2]);
        assert_eq!(token, at(2).to_token("live"), "the token names the page's last row");
        let mut two = vec![1, 2];
        assert_eq!(cut_page(&mut two, 2, "live", |&row| at(row)), "", "no row past the page: no next page");
        assert_eq!(two, [1, 2]);
    }

    #[test]
    fn page_size_defaults_caps_and_refuses_negatives() {
        let mut violations = Violations::default();
        assert_eq!(page_size("page_size", 0, &mut violations), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size("page_size", 7, &mut violations), 7);
        assert_eq!(page_size("page_size", i32::MAX, &mut violations), MAX_PAGE_SIZE);
        assert!(violations.is_empty());
        page_size("page_size", -1, &mut violations);
        assert_eq!(violations.fields().collect::<Vec<_>>(), ["page_size"]);
    }

    #[test]
    fn token_round_trips_for_its_own_filter_only() {
        let cursor = Cursor { at: DateTime::from_timestamp_micros(1_764_115_199_999_999).unwrap(), id: Uuid::new_v4() };
        let token = cursor.to_token("live|a|b");
        let mut violations = Violations::default();
        assert_eq!(Cursor::from_token("page_token", &token, "live|a|b", &mut violations), Some(cursor));
        assert!(violations.is_empty());
        assert_eq!(Cursor::from_token("page_token", &token, "expired", &mut violations), None);
        assert_eq!(Cursor::from_token("page_token", "zz", "live", &mut violations), None);
        assert_eq!(Cursor::from_token("page_token", "é", "live", &mut violations), None);
        let far_past =
            Cursor { at: DateTime::from_timestamp_micros(-220_000_000_000_000_000).unwrap(), id: Uuid::nil() };
        assert_eq!(Cursor::from_token("page_token", &far_past.to_token("live"), "live", &mut violations), None);
        assert_eq!(violations.fields().count(), 4);
    }

    #[test]
    fn a_token_is_the_lowercase_hex_of_its_cursor_so_tokens_already_handed_out_still_read() {
        let cursor = Cursor { at: DateTime::from_timestamp_micros(1).unwrap(), id: Uuid::nil() };
        let plain = "v1|1|00000000-0000-0000-0000-000000000000|live";
        let hex: String = plain.bytes().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(cursor.to_token("live"), hex);
    }
}
