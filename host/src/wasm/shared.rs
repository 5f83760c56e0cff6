//! What every released version of `wasmtp:filter` has in common: the `manifest` and stage
//! exports, the `types` interface with its conversions to and from the filter API, and the
//! host imports that did not change (log, config, notes). bindgen
//! makes distinct Rust types for each package version, so this is written once here and
//! expanded inside each version's module.

/// Expands `manifest`, `call` and the conversions in a version's module, which has in scope
/// `wit` (its generated `types`), `FilterPre`, `CallState`, `Store`, `HostCallError`, `api`
/// (`crate::filter::api`) and `auth` (`crate::auth::results`).
macro_rules! shared_contract {
    () => {
        /// A refused host call, as the error that ends the plugin call; the sandbox classifies it.
        fn trap(error: HostCallError) -> wasmtime::Error {
            wasmtime::Error::new(error)
        }

        /// Reads the plugin's manifest.
        pub async fn manifest(
            store: &mut Store<CallState>,
            pre: &FilterPre<CallState>,
        ) -> wasmtime::Result<api::Manifest> {
            let filter = pre.instantiate_async(&mut *store).await?;
            Ok(filter.call_manifest(&mut *store).await?.into())
        }

        /// Instantiates the plugin and calls the export for `call`'s stage.
        ///
        /// Only that export is looked up and type-checked: the generated `instantiate` checks
        /// every export the world has on every call, which perf showed as a fifth of the cost of
        /// a small plugin call (bench/profile.sh).
        pub async fn call(
            store: &mut Store<CallState>,
            pre: &FilterPre<CallState>,
            call: &api::Call<'_>,
        ) -> wasmtime::Result<api::Decision> {
            let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
            let conn = connection(call.conn);
            let (decision,) = match &call.input {
                api::StageInput::Connect => {
                    stage_export(store, &instance, "on-connect")?.call_async(&mut *store, (&conn,)).await?
                }
                api::StageInput::Ehlo { helo } => {
                    stage_export(store, &instance, "on-ehlo")?.call_async(&mut *store, (&conn, &helo[..])).await?
                }
                api::StageInput::Mail { sender } => {
                    stage_export(store, &instance, "on-mail")?
                        .call_async(&mut *store, (&conn, &address(sender)))
                        .await?
                }
                api::StageInput::Rcpt { envelope: env, recipient } => {
                    stage_export(store, &instance, "on-rcpt")?
                        .call_async(&mut *store, (&conn, &envelope(env), &address(recipient)))
                        .await?
                }
                api::StageInput::Data { envelope: env, message: msg } => {
                    stage_export(store, &instance, "on-data")?
                        .call_async(&mut *store, (&conn, &envelope(env), &crate::wasm::borrowed::Message::new(msg)))
                        .await?
                }
            };
            Ok(decision.into())
        }

        /// The stage export `name`, type-checked against the parameters it is called with.
        fn stage_export<P>(
            store: &mut Store<CallState>,
            instance: &wasmtime::component::Instance,
            name: &str,
        ) -> wasmtime::Result<wasmtime::component::TypedFunc<P, (wit::Decision,)>>
        where
            P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
        {
            instance.get_typed_func::<P, (wit::Decision,)>(&mut *store, name)
        }

        // Filter API → contract.

        fn connection(c: &api::Connection) -> wit::Connection {
            wit::Connection {
                session_id: c.session_id.to_string(),
                client_ip: c.client.ip().to_string(),
                client_port: c.client.port(),
                client_name: c.client_name.clone(),
                helo: c.helo.clone(),
                tls: c.tls.as_ref().map(|t| wit::TlsInfo { version: t.version.clone(), cipher: t.cipher.clone() }),
                authenticated_as: c.authenticated_as.clone(),
                auth: auth_results(&c.auth),
            }
        }

        fn address(a: &api::Address) -> wit::Address {
            wit::Address {
                mailbox: a.mailbox.clone(),
                params: a.params.iter().map(|p| wit::Param { name: p.name.clone(), value: p.value.clone() }).collect(),
            }
        }

        fn envelope(e: &api::Envelope) -> wit::Envelope {
            wit::Envelope {
                sender: e.sender.as_ref().map(address),
                recipients: e.recipients.iter().map(address).collect(),
            }
        }

        fn auth_result(r: auth::AuthResult) -> wit::AuthResult {
            match r {
                auth::AuthResult::Pass => wit::AuthResult::Pass,
                auth::AuthResult::Fail => wit::AuthResult::Fail,
                auth::AuthResult::Softfail => wit::AuthResult::Softfail,
                auth::AuthResult::Neutral => wit::AuthResult::Neutral,
                auth::AuthResult::None => wit::AuthResult::None,
                auth::AuthResult::Temperror => wit::AuthResult::Temperror,
                auth::AuthResult::Permerror => wit::AuthResult::Permerror,
            }
        }

        fn spf(s: &auth::SpfCheck) -> wit::SpfCheck {
            wit::SpfCheck { result: auth_result(s.result), domain: s.domain.clone() }
        }

        fn auth_results(a: &auth::AuthResults) -> wit::AuthResults {
            wit::AuthResults {
                iprev: a
                    .iprev
                    .as_ref()
                    .map(|i| wit::IprevCheck { result: auth_result(i.result), names: i.names.clone() }),
                spf_helo: a.spf_helo.as_ref().map(spf),
                spf_mail: a.spf_mail.as_ref().map(spf),
                dkim: a
                    .dkim
                    .iter()
                    .map(|d| wit::DkimCheck {
                        result: auth_result(d.result),
                        domain: d.domain.clone(),
                        selector: d.selector.clone(),
                        detail: d.detail.clone(),
                    })
                    .collect(),
                arc: a.arc.map(auth_result),
                dmarc: a.dmarc.as_ref().map(|d| wit::DmarcCheck {
                    result: auth_result(d.result),
                    domain: d.domain.clone(),
                    policy: match d.policy {
                        auth::DmarcPolicy::None => wit::DmarcPolicy::None,
                        auth::DmarcPolicy::Quarantine => wit::DmarcPolicy::Quarantine,
                        auth::DmarcPolicy::Reject => wit::DmarcPolicy::Reject,
                        auth::DmarcPolicy::Unspecified => wit::DmarcPolicy::Unspecified,
                    },
                    spf_aligned: d.spf_aligned,
                    dkim_aligned: d.dkim_aligned,
                }),
            }
        }

        // Contract → filter API.

        impl From<wit::Stage> for api::Stage {
            fn from(s: wit::Stage) -> Self {
                match s {
                    wit::Stage::Connect => api::Stage::Connect,
                    wit::Stage::Ehlo => api::Stage::Ehlo,
                    wit::Stage::Mail => api::Stage::Mail,
                    wit::Stage::Rcpt => api::Stage::Rcpt,
                    wit::Stage::Data => api::Stage::Data,
                }
            }
        }

        impl From<wit::EditKind> for api::EditKind {
            fn from(k: wit::EditKind) -> Self {
                match k {
                    wit::EditKind::SetSender => api::EditKind::SetSender,
                    wit::EditKind::AddRecipient => api::EditKind::AddRecipient,
                    wit::EditKind::RemoveRecipient => api::EditKind::RemoveRecipient,
                    wit::EditKind::AddHeader => api::EditKind::AddHeader,
                    wit::EditKind::InsertHeader => api::EditKind::InsertHeader,
                    wit::EditKind::ChangeHeader => api::EditKind::ChangeHeader,
                    wit::EditKind::RemoveHeader => api::EditKind::RemoveHeader,
                    wit::EditKind::ReplaceBody => api::EditKind::ReplaceBody,
                    wit::EditKind::Quarantine => api::EditKind::Quarantine,
                }
            }
        }

        impl From<wit::Manifest> for api::Manifest {
            fn from(m: wit::Manifest) -> Self {
                api::Manifest {
                    name: m.name,
                    version: m.version,
                    stages: m.stages.into_iter().map(Into::into).collect(),
                    body: match m.body {
                        wit::BodyAccess::None => api::BodyAccess::None,
                        wit::BodyAccess::Headers => api::BodyAccess::Headers,
                        wit::BodyAccess::Full => api::BodyAccess::Full,
                    },
                    edits: m.edits.into_iter().map(Into::into).collect(),
                }
            }
        }

        impl From<wit::Reply> for api::PluginReply {
            fn from(r: wit::Reply) -> Self {
                api::PluginReply { code: r.code, enhanced: r.enhanced, lines: r.lines }
            }
        }

        impl From<wit::Address> for api::Address {
            fn from(a: wit::Address) -> Self {
                api::Address {
                    mailbox: a.mailbox,
                    params: a.params.into_iter().map(|p| api::Param { name: p.name, value: p.value }).collect(),
                }
            }
        }

        impl From<wit::Header> for api::Header {
            fn from(h: wit::Header) -> Self {
                api::Header { name: h.name, value: h.value }
            }
        }

        impl From<wit::Edit> for api::Edit {
            fn from(e: wit::Edit) -> Self {
                match e {
                    wit::Edit::SetSender(a) => api::Edit::SetSender(a.into()),
                    wit::Edit::AddRecipient(a) => api::Edit::AddRecipient(a.into()),
                    wit::Edit::RemoveRecipient(m) => api::Edit::RemoveRecipient(m),
                    wit::Edit::AddHeader(h) => api::Edit::AddHeader(h.into()),
                    wit::Edit::InsertHeader(i) => api::Edit::InsertHeader { index: i.index, header: i.header.into() },
                    wit::Edit::ChangeHeader(c) => {
                        api::Edit::ChangeHeader { name: c.name, occurrence: c.occurrence, value: c.value }
                    }
                    wit::Edit::RemoveHeader(r) => api::Edit::RemoveHeader { name: r.name, occurrence: r.occurrence },
                    wit::Edit::ReplaceBody(body) => api::Edit::ReplaceBody(body),
                    wit::Edit::Quarantine(reason) => api::Edit::Quarantine(reason),
                }
            }
        }

        impl From<wit::Decision> for api::Decision {
            fn from(d: wit::Decision) -> Self {
                let verdict = match d.verdict {
                    wit::Verdict::Continue => api::Verdict::Continue,
                    wit::Verdict::Accept => api::Verdict::Accept,
                    wit::Verdict::Reject(r) => api::Verdict::Reject(r.into()),
                    wit::Verdict::Tempfail(r) => api::Verdict::Tempfail(r.into()),
                    wit::Verdict::Disconnect(r) => api::Verdict::Disconnect(r.into()),
                };
                api::Decision { verdict, edits: d.edits.into_iter().map(Into::into).collect() }
            }
        }
    };
}

/// Expands the host imports every version shares inside that version's `impl Host for
/// CallState`, which has `Level` (its generated log levels), `LogLevel` and `trap` in scope.
macro_rules! shared_host_imports {
    () => {
        fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
            let level = match level {
                Level::Trace => LogLevel::Trace,
                Level::Debug => LogLevel::Debug,
                Level::Info => LogLevel::Info,
                Level::Warn => LogLevel::Warn,
                Level::Error => LogLevel::Error,
            };
            self.host.log(level, &message).map_err(trap)
        }

        fn config(&mut self) -> wasmtime::Result<String> {
            self.host.config().map_err(trap)
        }

        fn notes_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
            self.host.notes_get(&key).map_err(trap)
        }

        fn notes_set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
            self.host.notes_set(key, value).map_err(trap)
        }
    };
}

pub(super) use {shared_contract, shared_host_imports};
