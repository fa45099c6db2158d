//! Gateways: the servers of every Gateway that selects this workload,
//! grouped into one listener per port (one protocol per port, one bind
//! address, `--port-map` applied).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::Compiler;
use crate::{
    config::{
        ConfigError,
        gateway::{GatewaySpec, Server as RawServer},
        load::Document,
    },
    model::gateway::{HostPattern, Listener, Protocol, Server},
};

impl Compiler<'_> {
    pub(super) fn listeners(&mut self, gateways: &[&Document<GatewaySpec>]) -> Vec<Listener> {
        let mut listeners: Vec<Listener> = Vec::new();
        for gw in gateways {
            for (i, server) in gw.spec.servers.iter().enumerate() {
                let field = format!("spec.servers[{i}]");
                let Some((port, protocol, compiled)) = self.server(gw, server, &field) else {
                    continue;
                };
                let bind = match &server.bind {
                    Some(b) => {
                        match b.parse::<IpAddr>() {
                            Ok(ip) => ip,
                            Err(_) => {
                                self.errors.push(gw.error(
                                format!("{field}.bind"),
                                format!("{b:?} is not an IP address (unix sockets are not supported)"),
                            ));
                                continue;
                            }
                        }
                    }
                    None => self.settings.bind_address,
                };
                let local_port = self.settings.port_map.get(&port).copied().unwrap_or(port);
                let local = SocketAddr::new(bind, local_port);
                match listeners.iter_mut().find(|l| l.port == port) {
                    Some(l) => {
                        if l.protocol != protocol {
                            self.errors.push(gw.error(
                                format!("{field}.port"),
                                format!(
                                    "port {port} is already served as {:?} by Gateway {}; one port has one protocol",
                                    l.protocol, l.servers[0].gateway
                                ),
                            ));
                            continue;
                        }
                        if l.local != local {
                            self.errors.push(gw.error(
                                format!("{field}.bind"),
                                format!("port {port} is bound to {} by another server", l.local),
                            ));
                            continue;
                        }
                        if compiled.tls.is_some() {
                            // SNI picks one server per name: a second
                            // server for the same name never gets a
                            // connection (its TLS settings would be lost).
                            for h in &compiled.hosts {
                                if let Some(first) = l
                                    .servers
                                    .iter()
                                    .find(|o| o.tls.is_some() && o.hosts.contains(h))
                                {
                                    self.warnings.push(format!(
                                        "{}: {}: {field}: host {h} on port {port} is already \
                                         served over TLS by Gateway {} server {}; connections \
                                         for it go there, never to this server",
                                        gw.source,
                                        gw.describe(),
                                        first.gateway,
                                        first.name
                                    ));
                                }
                            }
                        }
                        l.servers.push(Arc::new(compiled));
                    }
                    None => listeners.push(Listener {
                        port,
                        local,
                        protocol,
                        servers: vec![Arc::new(compiled)],
                    }),
                }
            }
        }
        listeners.sort_by_key(|l| l.port);
        // Two Gateway ports mapped onto one local address (--port-map).
        for (i, a) in listeners.iter().enumerate() {
            if let Some(b) = listeners[..i].iter().find(|b| b.local == a.local) {
                self.errors.push(ConfigError::Invalid {
                    at: None,
                    resource: None,
                    field: "--port-map".into(),
                    message: format!(
                        "Gateway ports {} and {} would both listen on {}",
                        b.port, a.port, a.local
                    ),
                });
            }
        }
        listeners
    }

    fn server(
        &mut self,
        gw: &Document<GatewaySpec>,
        server: &RawServer,
        field: &str,
    ) -> Option<(u16, Protocol, Server)> {
        let port = match u16::try_from(server.port.number) {
            Ok(p) if p > 0 => p,
            _ => {
                self.errors.push(gw.error(
                    format!("{field}.port.number"),
                    format!("{} is not a port (1-65535)", server.port.number),
                ));
                return None;
            }
        };
        let protocol = match server.port.protocol.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP2" | "GRPC" => Protocol::Http,
            "HTTPS" => Protocol::Https,
            other => {
                self.errors.push(gw.error(
                    format!("{field}.port.protocol"),
                    format!(
                        "protocol {other} is not served by llmgw (HTTP, HTTP2, GRPC, HTTPS are)"
                    ),
                ));
                return None;
            }
        };
        if server.hosts.is_empty() {
            self.errors.push(gw.error(
                format!("{field}.hosts"),
                "at least one host is required (use \"*\" for any)",
            ));
            return None;
        }
        let mut hosts = Vec::new();
        let mut host_namespaces = Vec::new();
        for h in &server.hosts {
            // `namespace/host`: the namespace part filters which routes may bind
            // (`.` is the Gateway's own namespace, `*` any).
            let (ns, host) = match h.split_once('/') {
                Some(("*", host)) => (None, host),
                Some((".", host)) => (Some(gw.id.namespace.clone()), host),
                Some((ns, host)) => (Some(ns.to_string()), host),
                None => (None, h.as_str()),
            };
            hosts.push(HostPattern::parse(host));
            host_namespaces.push(ns);
        }
        let mut https_redirect = false;
        let tls = match (&server.tls, protocol) {
            (Some(tls), Protocol::Http) => {
                https_redirect = tls.https_redirect;
                None
            }
            // On a TLS error keep going (without TLS) so that the listener
            // checks below still report their own problems.
            (Some(tls), Protocol::Https) => self
                .server_tls(gw, tls, &format!("{field}.tls"))
                .map(Arc::new),
            (None, Protocol::Https) => {
                self.errors.push(gw.error(
                    format!("{field}.tls"),
                    "an HTTPS server needs tls (mode SIMPLE with a certificate)",
                ));
                return None;
            }
            (None, Protocol::Http) => None,
        };
        let name = server
            .port
            .name
            .clone()
            .or_else(|| server.name.clone())
            .unwrap_or_else(|| format!("{}-{port}", server.port.protocol.to_lowercase()));
        Some((
            port,
            protocol,
            Server {
                gateway: gw.id.clone(),
                name,
                hosts,
                host_namespaces,
                tls,
                https_redirect,
                vhosts: Vec::new(),
            },
        ))
    }
}
