//! The registry's text parsers on arbitrary input: score expressions (`Expr::parse`, then
//! `eval` against a fixed tag set: never a panic) and pool
//! target strings (`Pool::parse`: an accepted pool prints back to a string that parses to the
//! same pool).
#![no_main]

use heartsink::registry::expr::{Expr, TagValueRef};
use heartsink::registry::lb::Pool;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(e) = Expr::parse(text) {
        let v = e.eval(|name| match name {
            "stat.cpu" => Some(TagValueRef::Float(55.5)),
            "stat.io" => Some(TagValueRef::Int(-3)),
            "tag.up" => Some(TagValueRef::Bool(true)),
            "tag.loc" => Some(TagValueRef::Str("dc1.r2")),
            _ => None,
        });
        // UNDEF (None) or a number: anything but a panic is fine here.
        let _ = v;
    }
    if let Ok(p) = Pool::parse("p", text) {
        let again = Pool::parse("p", &p.to_target_string()).expect("a printed pool parses");
        assert_eq!(again, p, "print → parse round trip");
    }
});
