use super::rule::reg;
use super::*;
use crate::batch::{RuleDef, SetDef};

fn encode(b: &Batch) -> Result<Encoded, NftError> {
    let mut lookup = |_: &TableRef, s: &Name| -> Result<SetInfo, NftError> {
        Err(NftError::Failed(format!("no set {s}")))
    };
    let flags = |_: &TableRef| 0;
    Encoder::new(&mut lookup, &flags).encode(b)
}

#[test]
fn registers_are_numbered_as_nft_numbers_them() {
    // 128-bit registers where aligned, 32-bit ones elsewhere
    let got: Vec<u32> = [0, 1, 2, 3, 4, 5, 8, 9].into_iter().map(reg).collect();
    assert_eq!(got, [1, 9, 10, 11, 2, 13, 3, 17]);
}

#[test]
fn a_keyword_nft_would_not_know_is_refused_not_guessed() {
    let t = TableRef::new(Family::Inet, "t").unwrap();
    let mut b = Batch::new();
    b.add_table(&t).add_rule(
        &t,
        RuleDef::new(
            &Name::new("c").unwrap(),
            vec![Expr::eq(Lhs::FibDaddrType, Rhs::Keyword("bogus"))],
        ),
    );
    let e = encode(&b).err().expect("refused").to_string();
    assert!(e.contains("bogus"), "{e}");
    // a value of the wrong family for the key
    let mut b = Batch::new();
    b.add_set(
        &t,
        SetDef::set(Name::new("s").unwrap(), vec![KeyType::Ipv4Addr])
            .with_elements(vec![Elem::key(Value::Addr("fd00::1".parse().unwrap()))]),
    );
    assert!(encode(&b).is_err());
}

#[test]
fn many_elements_are_split_so_every_attribute_length_fits() {
    let t = TableRef::new(Family::Inet, "t").unwrap();
    let elems: Vec<Elem> = (0..20_000u32)
        .map(|i| {
            let a = std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i));
            Elem::key(Value::Addr(a.into()))
        })
        .collect();
    let mut b = Batch::new();
    b.add_set(
        &t,
        SetDef::set(Name::new("s").unwrap(), vec![KeyType::Ipv6Addr]).with_elements(elems),
    );
    let enc = encode(&b).unwrap();
    let elem_msgs: Vec<_> = enc
        .msgs
        .iter()
        .filter(|m| m.kind == msg_kind(NFT_MSG_NEWSETELEM))
        .collect();
    assert!(elem_msgs.len() > 1, "one message would overflow");
    let mut total = 0;
    for m in elem_msgs {
        let list = super::super::decode::find(&m.payload[4..], NFTA_SET_ELEM_LIST_ELEMENTS)
            .expect("elements");
        assert!(list.len() < 65_535);
        total += super::super::decode::attrs(list).count();
    }
    assert_eq!(total, 20_000);
}
