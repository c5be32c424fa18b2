//! Resource names (AIP-122): `deals/{uuid}`, `orders/{uuid}` and a deal's waitlist entries,
//! `deals/{uuid}/waitlistEntries/{uuid}`.

use uuid::Uuid;

use super::status::Violations;

/// The collection prefix of deals.
pub const DEALS: &str = "deals/";
/// The collection prefix of orders.
pub const ORDERS: &str = "orders/";

/// Parses `value`, a name in `collection` such as `deals/…`, for `field`.
pub fn parse(field: &str, collection: &str, value: &str, violations: &mut Violations) -> Option<Uuid> {
    if value.is_empty() {
        violations.add(field, "is required");
        return None;
    }
    let id = value.strip_prefix(collection).and_then(|id| Uuid::try_parse(id).ok());
    if id.is_none() {
        violations.add(field, format!("must be a resource name of the form {collection}{{uuid}}"));
    }
    id
}

/// The collection of a deal's waitlist entries, after the deal's name.
pub const WAITLIST_ENTRIES: &str = "/waitlistEntries/";

/// Parses `value`, the name of a waitlist entry, for `field`: the deal's id and the entry's.
pub fn parse_waitlist_entry(field: &str, value: &str, violations: &mut Violations) -> Option<(Uuid, Uuid)> {
    if value.is_empty() {
        violations.add(field, "is required");
        return None;
    }
    let ids = value
        .strip_prefix(DEALS)
        .and_then(|rest| rest.split_once(WAITLIST_ENTRIES))
        .and_then(|(deal, entry)| Some((Uuid::try_parse(deal).ok()?, Uuid::try_parse(entry).ok()?)));
    if ids.is_none() {
        violations.add(field, format!("must be a resource name of the form {DEALS}{{uuid}}{WAITLIST_ENTRIES}{{uuid}}"));
    }
    ids
}

/// The resource name of waitlist entry `entry` of deal `deal`.
pub fn format_waitlist_entry(deal: Uuid, entry: Uuid) -> String {
    format!("{DEALS}{deal}{WAITLIST_ENTRIES}{entry}")
}

/// Parses a bare UUID (such as a reservation id) for `field`.
pub fn parse_uuid(field: &str, value: &str, violations: &mut Violations) -> Option<Uuid> {
    let id = Uuid::try_parse(value).ok();
    if id.is_none() {
        violations.add(field, if value.is_empty() { "is required" } else { "must be a UUID" });
    }
    id
}

/// The resource name of `id` in `collection`.
pub fn format(collection: &str, id: Uuid) -> String {
    format!("{collection}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_names_of_its_collection() {
        let id = Uuid::new_v4();
        let mut violations = Violations::default();
        assert_eq!(parse("name", DEALS, &format(DEALS, id), &mut violations), Some(id));
        assert!(violations.is_empty());
        for bad in ["", "deals/", "deals/not-a-uuid", &format(ORDERS, id), &id.to_string()] {
            let mut violations = Violations::default();
            assert_eq!(parse("name", DEALS, bad, &mut violations), None, "{bad:?}");
            assert_eq!(violations.fields().collect::<Vec<_>>(), ["name"]);
        }
    }

    #[test]
    fn parses_waitlist_entry_names_into_their_deal_and_entry() {
        let (deal, entry) = (Uuid::new_v4(), Uuid::new_v4());
        let mut violations = Violations::default();
        let name = format_waitlist_entry(deal, entry);
        assert_eq!(parse_waitlist_entry("name", &name, &mut violations), Some((deal, entry)));
        assert!(violations.is_empty());
        let bad = [
            String::new(),
            format(DEALS, deal),
            format!("{DEALS}{deal}/waitlistEntries/"),
            format!("{DEALS}{deal}/entries/{entry}"),
            format!("{DEALS}not-a-uuid/waitlistEntries/{entry}"),
            format!("{name}/more"),
        ];
        for bad in bad {
            let mut violations = Violations::default();
            assert_eq!(parse_waitlist_entry("name", &bad, &mut violations), None, "{bad:?}");
            assert_eq!(violations.fields().collect::<Vec<_>>(), ["name"]);
        }
    }
}
