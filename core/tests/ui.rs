//! The compiler's messages for handlers of the wrong shape, pinned: a
//! change to the `Handler` machinery that makes them worse fails here.
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite` after reading
//! the new messages.

#[test]
fn wrong_handler_signatures() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
