//! The packing slip, computed from an order's lines and the products the replica
//! knows. Pure, so the weight arithmetic is tested without a database.

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;

/// What the replica knows of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Product {
    pub(crate) name: String,
    pub(crate) weight_grams: i64,
}

/// One line of a complete slip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SlipLine {
    pub(crate) product_id: Uuid,
    pub(crate) name: String,
    pub(crate) quantity: i64,
    pub(crate) unit_weight_grams: i64,
    pub(crate) weight_grams: i64,
}

/// A complete packing slip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Slip {
    pub(crate) lines: Vec<SlipLine>,
    pub(crate) total_weight_grams: i64,
}

/// The slip for `lines` (product, quantity), or the products the replica does not
/// know yet (each once, in line order).
pub(crate) fn pack(
    lines: &[(Uuid, i64)],
    products: &HashMap<Uuid, Product>,
) -> Result<Slip, Vec<Uuid>> {
    let mut missing: Vec<Uuid> = Vec::new();
    let mut slip = Slip {
        lines: Vec::with_capacity(lines.len()),
        total_weight_grams: 0,
    };
    for (product_id, quantity) in lines {
        match products.get(product_id) {
            Some(p) => {
                let weight = p.weight_grams.saturating_mul(*quantity);
                slip.total_weight_grams = slip.total_weight_grams.saturating_add(weight);
                slip.lines.push(SlipLine {
                    product_id: *product_id,
                    name: p.name.clone(),
                    quantity: *quantity,
                    unit_weight_grams: p.weight_grams,
                    weight_grams: weight,
                });
            }
            None if !missing.contains(product_id) => missing.push(*product_id),
            None => {}
        }
    }
    if missing.is_empty() {
        Ok(slip)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(name: &str, weight_grams: i64) -> Product {
        Product {
            name: name.into(),
            weight_grams,
        }
    }

    #[test]
    fn the_total_weight_is_the_sum_of_unit_weight_times_quantity() {
        let (mug, teapot) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let products = HashMap::from([
            (mug, product("Mug", 350)),
            (teapot, product("Teapot", 1200)),
        ]);
        let slip = pack(&[(mug, 3), (teapot, 1)], &products).expect("complete");
        assert_eq!(slip.total_weight_grams, 3 * 350 + 1200);
        assert_eq!(slip.lines[0].name, "Mug");
        assert_eq!(slip.lines[0].weight_grams, 1050);
        assert_eq!(slip.lines[1].unit_weight_grams, 1200);
    }

    #[test]
    fn a_slip_with_unknown_products_names_each_of_them_once() {
        let (mug, a, b) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let products = HashMap::from([(mug, product("Mug", 350))]);
        assert_eq!(
            pack(&[(a, 1), (mug, 1), (b, 2), (a, 4)], &products),
            Err(vec![a, b])
        );
    }
}
