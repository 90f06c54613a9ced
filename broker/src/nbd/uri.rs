//! NBD URIs, as the NBD project's URI specification writes them (and QEMU, libnbd and nbdkit
//! take them): `nbd://host[:port]/[export]` over TCP (port 10809 by default) and
//! `nbd+unix:///[export]?socket=/path/to.sock` over a unix socket.

use std::fmt;
use std::path::PathBuf;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// An export on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub address: NbdAddress,
    /// The export's name ("" is the server's default export).
    pub export: String,
}

/// How a URI is written, for error messages.
pub const URI_FORMS: &str = "nbd://host[:port]/export or nbd+unix:///export?socket=/path/to/socket";

impl NbdUri {
    /// Whether `s` is meant as an NBD URI (its scheme), right or wrong.
    pub fn is_nbd(s: &str) -> bool {
        weir_sched::lun::is_nbd_uri(std::path::Path::new(s))
    }

    pub fn parse(s: &str) -> Result<NbdUri, String> {
        let bad = |why: &str| format!("'{s}' is not an NBD URI: {why} (write {URI_FORMS})");
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, export) = match rest.split_once('/') {
            Some((a, e)) => (a, e),
            None => (rest, ""),
        };
        let export = percent_decode(export).map_err(|e| bad(&e))?;
        match scheme {
            "nbd" | "nbd+tcp" => {
                if query.is_some() {
                    return Err(bad("a TCP URI takes no query (socket= is for nbd+unix)"));
                }
                let (host, port) = split_host_port(authority).map_err(|e| bad(&e))?;
                if host.is_empty() {
                    return Err(bad("no host"));
                }
                Ok(NbdUri {
                    address: NbdAddress::Tcp { host, port },
                    export,
                })
            }
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(bad(
                        "a unix-socket URI has no host (nbd+unix:///export?socket=...)",
                    ));
                }
                let socket = query
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .find_map(|kv| kv.strip_prefix("socket="))
                    .ok_or_else(|| bad("no socket=/path in the query"))?;
                let socket = percent_decode(socket).map_err(|e| bad(&e))?;
                if socket.is_empty() {
                    return Err(bad("socket= is empty"));
                }
                Ok(NbdUri {
                    address: NbdAddress::Unix(PathBuf::from(socket)),
                    export,
                })
            }
            other => Err(bad(&format!(
                "scheme '{other}' (weir speaks nbd, nbd+tcp and nbd+unix; no TLS)"
            ))),
        }
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            NbdAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            NbdAddress::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            NbdAddress::Unix(p) => {
                write!(f, "nbd+unix:///{}?socket={}", self.export, p.display())
            }
        }
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("port '{p}' is not a number from 1 to 65535"))
            .and_then(|n| {
                if n == 0 {
                    Err("port 0".to_string())
                } else {
                    Ok(n)
                }
            })
    };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "an IPv6 address without its closing ']'".to_string())?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), port(p)?)),
            None if after.is_empty() => Ok((host.to_string(), DEFAULT_PORT)),
            None => Err(format!("'{after}' after the IPv6 address")),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), port(p)?)),
        None => Ok((authority.to_string(), DEFAULT_PORT)),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the name is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_unix_and_ipv6_forms() {
        let u = NbdUri::parse("nbd://127.0.0.1:10810/disk0").unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "disk0");
        let u = NbdUri::parse("nbd://storage.example").unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "storage.example".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(u.export, "");
        let u = NbdUri::parse("nbd://[::1]:9000/a%20b").unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "::1".into(),
                port: 9000
            }
        );
        assert_eq!(u.export, "a b");
        assert_eq!(u.to_string(), "nbd://[::1]:9000/a b");
        let u = NbdUri::parse("nbd+unix:///exp?socket=/run/nbd.sock").unwrap();
        assert_eq!(u.address, NbdAddress::Unix("/run/nbd.sock".into()));
        assert_eq!(u.export, "exp");
    }

    #[test]
    fn refusals_say_what_is_wrong_and_how_to_write_it() {
        for (uri, why) in [
            ("nbd://host:0/x", "port 0"),
            ("nbd://host:99999/x", "65535"),
            ("nbd+unix:///x", "socket="),
            ("nbd+unix://host/x?socket=/s", "no host"),
            ("nbds://host/x", "no TLS"),
            ("nbd:///x", "no host"),
            ("nbd://[::1/x", "closing"),
            ("/dev/sda", "no scheme"),
        ] {
            let e = NbdUri::parse(uri).unwrap_err();
            assert!(e.contains(why), "{uri}: {e}");
            assert!(e.contains("nbd+unix:///export?socket="), "{uri}: {e}");
        }
    }
}
