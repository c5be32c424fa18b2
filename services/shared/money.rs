//! Exact prices. The API speaks `google.type.Money`; the database keeps an ISO 4217 code and an
//! integer number of micros (millionths of a unit), so no price ever passes through a float.

use crate::proto::Money;

use super::status::Violations;

const MICROS_PER_UNIT: i64 = 1_000_000;
const NANOS_PER_MICRO: i32 = 1_000;
/// The largest price accepted, in whole units of its currency.
pub const MAX_PRICE_UNITS: i64 = 1_000_000_000;

/// A positive amount in one currency, exact to the micro.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    currency_code: String,
    micros: i64,
}

impl Price {
    /// A price from its stored form. The database's check constraints keep it valid.
    pub fn from_stored(currency_code: String, micros: i64) -> Self {
        Self { currency_code, micros }
    }

    /// Validates `money` as a price for `field`, recording what is wrong in `violations`.
    pub fn parse(field: &str, money: Option<&Money>, violations: &mut Violations) -> Option<Self> {
        let Some(money) = money else {
            violations.add(field, "is required");
            return None;
        };
        let before = violations.clone();
        let code = &money.currency_code;
        if code.len() != 3 || !code.bytes().all(|byte| byte.is_ascii_uppercase()) {
            violations.add(format!("{field}.currency_code"), "must be a three-letter ISO 4217 code, such as INR");
        }
        if !(0..1_000_000_000).contains(&money.nanos) {
            violations.add(format!("{field}.nanos"), "must be between 0 and 999,999,999 for a price");
        } else if money.nanos % NANOS_PER_MICRO != 0 {
            violations.add(format!("{field}.nanos"), "must be a whole number of micros (at most six decimal places)");
        }
        if money.units < 0 || money.units > MAX_PRICE_UNITS {
            violations.add(format!("{field}.units"), format!("must be between 0 and {MAX_PRICE_UNITS}"));
        } else if money.units == 0 && money.nanos == 0 {
            violations.add(field.to_owned(), "must be greater than zero");
        }
        if *violations != before {
            return None;
        }
        let micros = money.units * MICROS_PER_UNIT + i64::from(money.nanos / NANOS_PER_MICRO);
        Some(Self { currency_code: code.clone(), micros })
    }

    /// The ISO 4217 currency code.
    pub fn currency_code(&self) -> &str {
        &self.currency_code
    }

    /// The amount in millionths of a unit.
    pub fn micros(&self) -> i64 {
        self.micros
    }

    /// This price times `quantity`, or `None` if it would not fit.
    pub fn times(&self, quantity: i32) -> Option<Self> {
        let micros = self.micros.checked_mul(i64::from(quantity))?;
        Some(Self { currency_code: self.currency_code.clone(), micros })
    }

    /// The price as `google.type.Money`.
    pub fn to_proto(&self) -> Money {
        Money {
            currency_code: self.currency_code.clone(),
            units: self.micros / MICROS_PER_UNIT,
            // The remainder is below one unit, so it fits an i32 of nanos.
            nanos: i32::try_from(self.micros % MICROS_PER_UNIT).unwrap_or(0) * NANOS_PER_MICRO,
        }
    }
}

impl std::fmt::Display for Price {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = self.micros / MICROS_PER_UNIT;
        let fraction = self.micros % MICROS_PER_UNIT;
        write!(f, "{} {units}.{fraction:06}", self.currency_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(code: &str, units: i64, nanos: i32) -> Money {
        Money { currency_code: code.into(), units, nanos }
    }

    fn parse(money: Money) -> Result<Price, Violations> {
        let mut violations = Violations::default();
        let price = Price::parse("price", Some(&money), &mut violations);
        match price {
            Some(price) if violations.is_empty() => Ok(price),
            _ => Err(violations),
        }
    }

    #[test]
    fn round_trips_exactly() {
        let price = parse(money("INR", 499, 990_000_000)).unwrap();
        assert_eq!(price.micros(), 499_990_000);
        assert_eq!(price.to_proto(), money("INR", 499, 990_000_000));
        assert_eq!(price.to_string(), "INR 499.990000");
    }

    #[test]
    fn refuses_zero_negative_and_too_large() {
        for bad in [
            money("INR", 0, 0),
            money("INR", -1, 0),
            money("INR", 0, -5_000),
            money("INR", MAX_PRICE_UNITS + 1, 0),
            money("INR", i64::MAX, 0),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refuses_bad_currency_and_sub_micro_precision() {
        let err = parse(money("inr", 1, 1)).unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), ["price.currency_code", "price.nanos"]);
    }

    #[test]
    fn missing_price_is_named() {
        let mut violations = Violations::default();
        assert!(Price::parse("deal.final_price", None, &mut violations).is_none());
        assert_eq!(violations.fields().collect::<Vec<_>>(), ["deal.final_price"]);
    }

    #[test]
    fn multiplication_that_overflows_is_refused() {
        let price = Price::from_stored("INR".into(), i64::MAX / 2);
        assert!(price.times(3).is_none());
        assert_eq!(parse(money("INR", 2, 0)).unwrap().times(3).unwrap().micros(), 6_000_000);
    }
}
