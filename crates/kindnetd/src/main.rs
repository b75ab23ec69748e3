//! kindnetd entry point: wiring only.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use clap::Parser;
use kindnet_netlink::RouteEvents;
use kindnetd::host::dataplane::Netlink;
use kindnetd::host::routes::{ROUTE_PROTOCOL, RouteOptions};
use kindnetd::inputs::config::Flags;
use kindnetd::inputs::store::NodeStore;
use kindnetd::reconcile::{Reconciler, Settings, Trigger, route_event_matters};
use kindnetd::serve::status::Status;
use kindnetd::source::{self, Sink};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "doctor") {
        return kindnetd::tools::doctor::cli_main(std::env::args_os().skip(1));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "cleanup") {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
        return kindnetd::tools::cleanup::cli_main(std::env::args_os().skip(1));
    }
    let flags = match Flags::try_parse() {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    if let Err(msg) = flags.validate() {
        eprintln!("kindnetd: {msg}");
        return ExitCode::from(2);
    }
    let filter = match EnvFilter::try_new(kindnetd::inputs::config::log_filter(&flags.log_level)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kindnetd: --log-level {:?}: {e}", flags.log_level);
            return ExitCode::from(2);
        }
    };
    // Plain text, one line per event: names from outside (nodes, pods,
    // policies) are printed with their control characters escaped, so
    // none can break a line or forge one (no colours: they would be
    // escaped too).
    // (JSON lines escape control characters themselves.)
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    if flags.log_json {
        sub.with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init();
    } else {
        sub.with_writer(kindnetd::serve::text::stderr).init();
    }

    if flags.sysctls_only {
        return sysctls_only(flags.policy_on_bridge());
    }
    if flags.print_conflist {
        return print_conflist(&flags);
    }
    // Descriptors: sockets, netlink, the nodes file, nft children. A 1024
    // soft limit is common and too low to ride out a connection flood.
    match kindnetd::serve::http::raise_nofile_limit() {
        Ok((old, new)) if new != old => {
            tracing::info!(old, new, "raised the soft limit of open files")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the soft limit of open files"),
    }

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(flags))
}

/// The signals kindnetd handles. Installed first thing, so that none of
/// them can kill the daemon by its default action once it runs: SIGTERM and
/// SIGINT end it cleanly; SIGHUP, SIGUSR1 and SIGUSR2 (whose default action
/// would kill it silently) are logged and ignored.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

fn signals() -> std::io::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok(Signals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
        usr1: signal(SignalKind::user_defined1())?,
        usr2: signal(SignalKind::user_defined2())?,
    })
}

async fn run(flags: Flags) -> ExitCode {
    let mut signals = match signals() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the signal handlers");
            return ExitCode::FAILURE;
        }
    };
    // validate() checked that a node name can be found.
    let node_name = flags.resolved_node_name().unwrap_or_default();
    let status = Arc::new(Status::new());
    let store = Arc::new(Mutex::new(NodeStore::new()));
    let (tx, rx) = mpsc::channel::<Trigger>();

    tracing::info!(
        node = %node_name,
        source = if flags.nodes_file.is_some() { "file" } else { "kubernetes" },
        route_protocol = ROUTE_PROTOCOL,
        masquerading = flags.masquerading,
        network_policy = flags.network_policy,
        cni_conf_dir = %flags.cni_conf_dir.display(),
        "kindnetd {} starting",
        env!("CARGO_PKG_VERSION")
    );

    // NetworkPolicy: inputs fed by the same source, its own reconciler.
    let policy_inputs = Arc::new(Mutex::new(kindnetd::policy::Inputs::default()));
    let (policy_tx, policy_rx) = mpsc::channel::<()>();
    let policy_sink = kindnetd::policy::PolicySink::new(policy_inputs.clone(), policy_tx);
    let policy_inputs_for_reclaim = policy_inputs.clone();

    // The node source first: a bad kubeconfig is a configuration error.
    let mut sink = Sink::new(store.clone(), tx.clone(), status.clone());
    if flags.network_policy {
        sink = sink.with_policy(policy_sink.clone());
    }
    let source_task = match &flags.nodes_file {
        Some(path) => tokio::spawn(source::file::run(path.clone(), sink)),
        None => {
            let names = kindnetd::inputs::resolve::Sources {
                hosts: flags.hosts_file.clone(),
                resolv_conf: flags.resolv_conf.clone(),
            };
            let client = match source::kube::connect(
                flags.kubeconfig.as_deref(),
                flags.control_plane_endpoint.as_deref(),
                &names,
            )
            .await
            {
                Ok((c, api)) => {
                    tracing::info!(server = %api.url, from = %api.origin, "API server {api}");
                    status.set_api_server(api.to_string());
                    c
                }
                Err(e) => {
                    eprintln!("kindnetd: {e}");
                    tracing::error!(error = %e, "cannot build the Kubernetes client");
                    return ExitCode::from(2);
                }
            };
            if flags.network_policy {
                // before the v1 watches: policy waits for discovery
                tokio::spawn(source::kube_cnp::start(
                    client.clone(),
                    policy_sink.clone(),
                    status.clone(),
                    source::kube_cnp::DISCOVERY_PERIOD,
                ));
                tokio::spawn(source::kube_netpol::run(
                    client.clone(),
                    policy_sink.clone(),
                    status.clone(),
                ));
            }
            tokio::spawn(source::kube::run(client, sink))
        }
    };

    let dp = match Netlink::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot talk to the kernel");
            return ExitCode::FAILURE;
        }
    };
    let (policy_dp, counter_nft) = match (
        kindnetd::policy::run::open_nft(Some(kindnetd::policy::run::LOCK_DIR.into())),
        kindnetd::policy::run::open_nft(None),
    ) {
        (Ok(p), Ok(c)) => (p, c),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot talk to nf_tables");
            return ExitCode::FAILURE;
        }
    };
    let policy = kindnetd::policy::run::PolicyReconciler::new(
        kindnetd::policy::run::PolicySettings {
            enabled: flags.network_policy,
            own_name: node_name.clone(),
            own_ips: flags.own_ips(),
            log_denied: flags.network_policy_log_denied,
            budget: kindnet_netpol::Budget {
                per_policy: flags.network_policy_max_policy_elements,
                per_node: flags.network_policy_max_node_elements,
            },
        },
        policy_dp,
        policy_inputs,
        store.clone(),
        status.clone(),
    );
    let counters = kindnetd::policy::run::CounterReader::new(
        counter_nft,
        status.clone(),
        policy.replacements(),
        kindnetd::policy::run::COUNTER_TIMEOUT,
    );
    let policy_resync = flags.resync_period;
    if let Err(e) = std::thread::Builder::new()
        .name("netpol".into())
        .spawn(move || policy.run(policy_rx, policy_resync))
    {
        tracing::error!(error = %e, "cannot start the NetworkPolicy thread");
        return ExitCode::FAILURE;
    }
    if flags.network_policy
        && let Err(e) = std::thread::Builder::new()
            .name("netpol-status".into())
            .spawn(move || counters.run(kindnetd::policy::run::COUNTER_PERIOD))
    {
        tracing::error!(error = %e, "cannot start the NetworkPolicy counter thread");
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        own_name: node_name,
        route_opts: RouteOptions {
            ipv6_prefix: flags.ipv6_prefix,
            own_ips: flags.own_ips(),
            // Filled from `pod_subnet` by the reconciler.
            pod_subnet: Vec::new(),
        },
        pod_subnet: flags.pod_subnet.0.clone(),
        static_pod_cidrs: flags.static_pod_cidrs.0.clone(),
        no_masquerade: flags.no_masquerade(),
        masquerading: flags.masquerading,
        configure_sysctls: flags.configure_sysctls,
        cni_conf_dir: flags.cni_conf_dir.clone(),
        bridge: flags.cni_bridge.0.clone(),
        cni_chain: flags.cni_chain,
        ipam_data_dir: flags.ipam_data_dir.clone(),
        mtu: flags.mtu,
        resync_period: flags.resync_period,
        reclaim_grace: flags.reclaim_grace,
        policy_on_bridge: flags.policy_on_bridge(),
    };
    let mut reconciler = Reconciler::new(settings, dp, store.clone(), status.clone());
    if flags.network_policy {
        reconciler = reconciler.with_pods(policy_inputs_for_reclaim);
    }
    if let Err(e) = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || reconciler.run(rx))
    {
        tracing::error!(error = %e, "cannot start the reconciler thread");
        return ExitCode::FAILURE;
    }
    // The doctor's findings in /readyz, after the first passes settled.
    if let Err(e) = kindnetd::tools::doctor::spawn_in_daemon(
        &flags,
        store.clone(),
        status.clone(),
        Duration::from_secs(3),
    ) {
        tracing::warn!(error = %e, "cannot start the doctor thread");
    }
    if let Err(e) = std::thread::Builder::new()
        .name("route-events".into())
        .spawn(move || watch_route_events(tx))
    {
        tracing::error!(error = %e, "cannot start the route event thread");
        return ExitCode::FAILURE;
    }

    if let Some(addr) = flags.metrics_bind() {
        let listener = match kindnetd::serve::http::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for /metrics /healthz /readyz /config");
                return ExitCode::FAILURE;
            }
        };
        let max_silence = (flags.resync_period * 3).max(Duration::from_secs(30));
        let config = kindnetd::serve::effective::EffectiveConfig::of(&flags).to_json();
        let app = kindnetd::serve::http::router(status.clone(), max_silence, config);
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics /healthz /readyz /config");
        let st = status.clone();
        tokio::spawn(async move {
            let limits = kindnetd::serve::http::Limits::default();
            if let Err(e) = kindnetd::serve::http::serve(listener, app, limits, st).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }

    let mut source_task = source_task;
    loop {
        tokio::select! {
            _ = signals.term.recv() => {
                tracing::info!("SIGTERM: exiting, routes and rules stay in place");
                break;
            }
            _ = signals.int.recv() => {
                tracing::info!("SIGINT: exiting, routes and rules stay in place");
                break;
            }
            _ = signals.hup.recv() => {
                // A terminal closing, or a supervisor's "reload": there is
                // nothing to reload (the nodes file is watched), so carry on.
                tracing::info!("SIGHUP ignored: kindnetd has no configuration to reload");
            }
            _ = signals.usr1.recv() => tracing::info!("SIGUSR1 ignored"),
            _ = signals.usr2.recv() => tracing::info!("SIGUSR2 ignored"),
            r = &mut source_task => {
                tracing::error!(result = ?r.err(), "node source stopped");
                return ExitCode::FAILURE;
            }
        }
    }
    // Routes, rules and the conflist are deliberately left as they are:
    // pods keep working while the next kindnetd starts.
    ExitCode::SUCCESS
}

/// `--print-conflist`: kindnetd's conflist for the given ranges, on stdout.
fn print_conflist(flags: &Flags) -> ExitCode {
    if flags.static_pod_cidrs.0.is_empty() {
        eprintln!("--print-conflist needs --static-pod-cidrs (the node's ranges)");
        return ExitCode::from(2);
    }
    print!(
        "{}",
        kindnetd::host::cniconf::render(&kindnetd::host::cniconf::CniInputs {
            chain: flags.cni_chain,
            pod_cidrs: flags.static_pod_cidrs.0.clone(),
            mtu: if flags.mtu == 0 { 1500 } else { flags.mtu },
            bridge: flags.cni_bridge.0.clone(),
            ipam_data_dir: flags.ipam_data_dir.clone(),
        })
    );
    ExitCode::SUCCESS
}

/// `--sysctls-only`: set the forwarding sysctls once and exit.
fn sysctls_only(policy_on_bridge: bool) -> ExitCode {
    use kindnetd::host::dataplane::Dataplane;
    let mut dp = match Netlink::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot talk to the kernel");
            return ExitCode::FAILURE;
        }
    };
    let view = match dp.view() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot read links and routes");
            return ExitCode::FAILURE;
        }
    };
    if kindnetd::reconcile::apply_sysctls(&mut dp, &view, policy_on_bridge).is_empty() {
        tracing::info!("forwarding sysctls in place");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Forwards kernel route changes that may concern kindnetd's routes
/// ([`route_event_matters`]) to the reconciler.
fn watch_route_events(tx: mpsc::Sender<Trigger>) {
    loop {
        let mut events = match RouteEvents::subscribe() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to route events; relying on periodic resync");
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            match events.next(Some(Duration::from_secs(60))) {
                Ok(evs) => {
                    let relevant = evs.iter().any(|e| {
                        let r = match e {
                            kindnet_netlink::RouteEvent::Added(r)
                            | kindnet_netlink::RouteEvent::Deleted(r) => r,
                        };
                        route_event_matters(r.table, r.protocol, &r.dst)
                    });
                    if relevant && tx.send(Trigger::RouteEvent).is_err() {
                        return;
                    }
                }
                Err(e) if e.is_overrun() => {
                    tracing::debug!("route events overflowed; full resync");
                    if tx.send(Trigger::Resync).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "route event socket failed; resubscribing");
                    let _ = tx.send(Trigger::Resync);
                    break;
                }
            }
        }
    }
}
