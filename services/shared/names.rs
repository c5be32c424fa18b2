//! Resource names (AIP-122): `deals/{uuid}` and `orders/{uuid}`.

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
}
