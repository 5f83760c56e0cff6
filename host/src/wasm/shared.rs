//! What every released version of `wasmtp:filter` has in common: the `manifest` and stage
//! exports, the `types` interface with its conversions to and from the filter API, and the
//! host imports that did not change (log, config, notes). bindgen
//! makes distinct Rust types for each package version, so this is written once here and
//! expanded inside each version's module.

/// Expands `Prepared`, `manifest`, `call` and the conversions in a version's module, which has
/// in scope `wit` (its generated `types`), `FilterPre`, `CallState`, `Store`, `HostCallError`,
/// `api` (`crate::filter::api`) and `auth` (`crate::auth::results`).
macro_rules! shared_contract {
    () => {
        /// A refused host call, as the error that ends the plugin call; the sandbox classifies it.
        fn trap(error: HostCallError) -> wasmtime::Error {
            wasmtime::Error::new(error)
        }

        /// The parameters each stage export is called with: the one definition both the check
        /// at load ([`StageExports::new`]) and the calls ([`call`]) use.
        type ConnectParams<'a> = (&'a wit::Connection,);
        type EhloParams<'a> = (&'a wit::Connection, &'a str);
        type MailParams<'a> = (&'a wit::Connection, &'a wit::Address);
        type RcptParams<'a> = (&'a wit::Connection, &'a wit::Envelope, &'a wit::Address);
        type DataParams<'a> = (&'a wit::Connection, &'a wit::Envelope, &'a crate::wasm::borrowed::Message<'a>);
        /// What every stage export returns.
        type StageResult = (wit::Decision,);

        /// A plugin of this contract version, linked: the generated pre-instance (whose `new`
        /// checks every export of the world) and its stage exports.
        pub struct Prepared {
            pre: FilterPre<CallState>,
            stages: StageExports,
        }

        impl Prepared {
            pub fn new(pre: wasmtime::component::InstancePre<CallState>) -> wasmtime::Result<Self> {
                let pre = FilterPre::new(pre)?;
                let stages = StageExports::new(pre.instance_pre())?;
                Ok(Self { pre, stages })
            }
        }

        /// Each stage export's index, type-checked once, when the plugin is loaded, against the
        /// parameters `call` passes it (for [`DataParams`] the host's borrowed message record,
        /// not bindgen's). A call then takes its export by index without checking it again:
        /// the check compares every field name of the records and was 8 % of the sandbox's
        /// samples under load (bench/profile-2026-12-03.md, "Per message").
        struct StageExports {
            connect: wasmtime::component::ComponentExportIndex,
            ehlo: wasmtime::component::ComponentExportIndex,
            mail: wasmtime::component::ComponentExportIndex,
            rcpt: wasmtime::component::ComponentExportIndex,
            data: wasmtime::component::ComponentExportIndex,
        }

        impl StageExports {
            fn new(pre: &wasmtime::component::InstancePre<CallState>) -> wasmtime::Result<Self> {
                Ok(Self {
                    connect: checked_export::<ConnectParams<'static>>(pre, "on-connect")?,
                    ehlo: checked_export::<EhloParams<'static>>(pre, "on-ehlo")?,
                    mail: checked_export::<MailParams<'static>>(pre, "on-mail")?,
                    rcpt: checked_export::<RcptParams<'static>>(pre, "on-rcpt")?,
                    data: checked_export::<DataParams<'static>>(pre, "on-data")?,
                })
            }
        }

        /// The index of the export `name`, once it is known to be a function taking `P` and
        /// returning [`StageResult`]. Lifetimes are not part of a component type: a check with
        /// `'static` holds for every lifetime.
        fn checked_export<P>(
            pre: &wasmtime::component::InstancePre<CallState>,
            name: &str,
        ) -> wasmtime::Result<wasmtime::component::ComponentExportIndex>
        where
            P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
        {
            use wasmtime::component::types::ComponentItem;
            let (item, index) = pre
                .component()
                .get_export(None, name)
                .ok_or_else(|| wasmtime::format_err!("no export `{name}` found"))?;
            match item {
                ComponentItem::ComponentFunc(func) => wasmtime::error::Context::with_context(
                    func.typecheck::<P, StageResult>(&pre.instance_type()),
                    || format!("type-checking export func `{name}`"),
                )?,
                _ => wasmtime::bail!("export `{name}` is not a function"),
            }
            Ok(index)
        }

        /// Reads the plugin's manifest.
        pub async fn manifest(store: &mut Store<CallState>, plugin: &Prepared) -> wasmtime::Result<api::Manifest> {
            let filter = plugin.pre.instantiate_async(&mut *store).await?;
            Ok(filter.call_manifest(&mut *store).await?.into())
        }

        /// Instantiates the plugin and calls the export for `call`'s stage.
        ///
        /// Only that export is looked up, by the index checked at load: the generated
        /// `instantiate` looks up all seven exports on every call, which perf showed as a fifth
        /// of the cost of a small plugin call (bench/profile.sh).
        pub async fn call(
            store: &mut Store<CallState>,
            plugin: &Prepared,
            call: &api::Call<'_>,
        ) -> wasmtime::Result<api::Decision> {
            let instance = plugin.pre.instance_pre().instantiate_async(&mut *store).await?;
            let stages = &plugin.stages;
            let conn = connection(call.conn);
            // SAFETY (each `stage_export`): the index was type-checked at load against the
            // same parameter alias, in `StageExports::new`, for this component.
            let (decision,) = match &call.input {
                api::StageInput::Connect => {
                    let func = unsafe { stage_export::<ConnectParams<'_>>(store, &instance, &stages.connect)? };
                    func.call_async(&mut *store, (&conn,)).await?
                }
                api::StageInput::Ehlo { helo } => {
                    let func = unsafe { stage_export::<EhloParams<'_>>(store, &instance, &stages.ehlo)? };
                    func.call_async(&mut *store, (&conn, &helo[..])).await?
                }
                api::StageInput::Mail { sender } => {
                    let func = unsafe { stage_export::<MailParams<'_>>(store, &instance, &stages.mail)? };
                    func.call_async(&mut *store, (&conn, &address(sender))).await?
                }
                api::StageInput::Rcpt { envelope: env, recipient } => {
                    let func = unsafe { stage_export::<RcptParams<'_>>(store, &instance, &stages.rcpt)? };
                    func.call_async(&mut *store, (&conn, &envelope(env), &address(recipient))).await?
                }
                api::StageInput::Data { envelope: env, message: msg } => {
                    let func = unsafe { stage_export::<DataParams<'_>>(store, &instance, &stages.data)? };
                    let message = crate::wasm::borrowed::Message::new(msg);
                    func.call_async(&mut *store, (&conn, &envelope(env), &message)).await?
                }
            };
            Ok(decision.into())
        }

        /// The stage export at `index` of `instance`, as a function taking `P`.
        ///
        /// # Safety
        ///
        /// `index` must have been checked by [`checked_export`] with the same `P` (up to
        /// lifetimes) for the component `instance` was instantiated from.
        unsafe fn stage_export<P>(
            store: &mut Store<CallState>,
            instance: &wasmtime::component::Instance,
            index: &wasmtime::component::ComponentExportIndex,
        ) -> wasmtime::Result<wasmtime::component::TypedFunc<P, StageResult>>
        where
            P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
        {
            let func = instance
                .get_func(&mut *store, index)
                .ok_or_else(|| wasmtime::format_err!("the stage export is missing from its instance"))?;
            // SAFETY: the caller guarantees the export's type was checked against `P`.
            Ok(unsafe { wasmtime::component::TypedFunc::new_unchecked(func) })
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
