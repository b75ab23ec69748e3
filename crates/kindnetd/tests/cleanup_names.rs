//! `kindnetd cleanup` names the plugin's tables and lock directory without
//! linking the plugin: they must be the plugin's own (the binary and plugin
//! names are one list, in cni-spec).

use kindnetd::tools::cleanup::{ANTISPOOF_TABLE, PLUGIN_TABLES};

#[test]
fn cleanup_knows_every_plugin_table_name_and_the_lock_dir() {
    let mut plugin_tables = vec![kindnet_cni::masq::TABLE, kindnet_cni::portmap::TABLE];
    plugin_tables.sort();
    let mut ours = PLUGIN_TABLES.to_vec();
    ours.sort();
    assert_eq!(ours, plugin_tables);
    assert_eq!(ANTISPOOF_TABLE, kindnet_cni::antispoof::TABLE);
    assert_eq!(
        kindnet_cni::antispoof::FAMILIES,
        [kindnet_nft::Family::Inet, kindnet_nft::Family::Bridge]
    );
    assert_eq!(kindnetd::policy::run::LOCK_DIR, kindnet_cni::NFT_LOCK_DIR);
}
