//! header-stamper: adds configured headers to every message and removes unwanted ones.
//!
//! ```toml
//! [[plugins]]
//! name = "stamper"
//! path = "header_stamper.wasm"
//! [plugins.config]
//! add = { "X-Filtered-By" = "wasmtp" }   # appended after the last header
//! remove = ["X-Spam-Flag", "X-Internal"] # every occurrence is removed
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmtp_plugin::{BodyAccess, Connection, Decision, EditKind, Envelope, Filter, Manifest, Message, Stage, export};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    add: BTreeMap<String, String>,
    remove: Vec<String>,
}

struct HeaderStamper;

impl Filter for HeaderStamper {
    type Config = Config;

    fn manifest(_config: &Config) -> Manifest {
        Manifest::new("header-stamper", env!("CARGO_PKG_VERSION"))
            .stages([Stage::Data])
            .body(BodyAccess::Headers)
            .edits([EditKind::AddHeader, EditKind::RemoveHeader])
    }

    fn on_data(config: &Config, _conn: &Connection, _envelope: &Envelope, message: &Message) -> Decision {
        let mut decision = Decision::next();
        for name in &config.remove {
            // Remove from the last occurrence backwards so earlier occurrence numbers stay valid.
            let count = message.headers_named(name).count() as u32;
            for occurrence in (1..=count).rev() {
                decision = decision.remove_header(name, occurrence);
            }
        }
        for (name, value) in &config.add {
            decision = decision.add_header(name, value);
        }
        decision
    }
}

export!(HeaderStamper);
