//! The S3 client (object_store → reqwest → rustls) and kube (rustls with
//! aws-lc-rs) end up in the same binaries (runtimed, the maintainer). rustls
//! panics in `ClientConfig::builder()` when more than one crypto provider is
//! compiled in and none was installed, so exactly one must be: aws-lc-rs.
//! This test binary links both (kube via the test environment crate) and
//! installs nothing, so a dependency change that brings in ring fails here.

#[test]
fn exactly_one_crypto_provider_is_compiled_in() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "nothing should have installed a provider yet"
    );
    let built = std::panic::catch_unwind(|| {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    assert!(
        built.is_ok(),
        "rustls could not pick a crypto provider from its crate features: more than one \
         (ring and aws-lc-rs?) is compiled in; check `cargo tree -i ring -e features`"
    );
    // Touch the S3 store too, so this binary really links object_store's stack.
    let store = kruntimes_artifacts::StoreConfig::parse("s3://bucket?endpoint=https://127.0.0.1:1")
        .unwrap()
        .open();
    assert!(store.is_ok());
}
