//! iSCSI target URIs, as libiscsi and QEMU spell them: `iscsi://host[:port]/target-iqn/lun`
//! (port 3260 when left out; an IPv6 host in brackets). No user or password: CHAP is not
//! supported yet, and a URI carrying one is refused rather than silently ignored.

use std::fmt;

/// One path to an iSCSI LUN: a portal, a target and a LUN number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiUri {
    /// `host:port`, as libiscsi takes it.
    pub portal: String,
    pub target: String,
    pub lun: u16,
}

impl IscsiUri {
    /// Whether `s` names an iSCSI target (by its scheme).
    pub fn is_iscsi(s: &str) -> bool {
        weir_sched::lun::is_iscsi_uri(std::path::Path::new(s))
    }

    pub fn parse(s: &str) -> Result<IscsiUri, String> {
        let rest = s
            .strip_prefix("iscsi://")
            .ok_or_else(|| format!("'{s}' is not an iSCSI URI (iscsi://host[:port]/iqn/lun)"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| {
            format!("'{s}' names no target: write iscsi://host[:port]/target-iqn/lun")
        })?;
        if authority.contains('@') {
            return Err(format!(
                "'{s}': CHAP credentials in the URI are not supported; give a target that \
                 allows this initiator without CHAP"
            ));
        }
        if authority.is_empty() {
            return Err(format!("'{s}' names no host"));
        }
        let (host, port) = split_port(authority).map_err(|e| format!("'{s}': {e}"))?;
        let (target, lun) = path.rsplit_once('/').ok_or_else(|| {
            format!("'{s}' names no LUN: write iscsi://host[:port]/target-iqn/lun (e.g. /1)")
        })?;
        if target.is_empty() || target.contains('/') {
            return Err(format!("'{s}': the target name '{target}' is not an IQN"));
        }
        let lun = lun
            .parse::<u16>()
            .map_err(|_| format!("'{s}': the LUN '{lun}' is not a number (0–65535)"))?;
        Ok(IscsiUri {
            portal: format!("{host}:{port}"),
            target: target.to_string(),
            lun,
        })
    }
}

/// `host[:port]` → (host, port), brackets kept on an IPv6 host.
fn split_port(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (h, rest) = after
            .split_once(']')
            .ok_or("an IPv6 host needs its closing ']'")?;
        (format!("[{h}]"), rest.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None | Some("") => 3260,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("the port '{p}' is not a port (1–65535)")),
            Ok(p) => p,
        },
    };
    Ok((host, port))
}

impl fmt::Display for IscsiUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iscsi://{}/{}/{}", self.portal, self.target, self.lun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_bad_ones_say_what_is_wrong() {
        let u = IscsiUri::parse("iscsi://127.0.0.2/iqn.2026-12.weir:t1/1").unwrap();
        assert_eq!(
            u,
            IscsiUri {
                portal: "127.0.0.2:3260".into(),
                target: "iqn.2026-12.weir:t1".into(),
                lun: 1
            }
        );
        assert_eq!(
            u.to_string(),
            "iscsi://127.0.0.2:3260/iqn.2026-12.weir:t1/1"
        );
        let v6 = IscsiUri::parse("iscsi://[::1]:3261/iqn.x:y/0").unwrap();
        assert_eq!(v6.portal, "[::1]:3261");
        for (bad, says) in [
            ("nbd://h/x", "not an iSCSI URI"),
            ("iscsi://host", "names no target"),
            ("iscsi://host/iqn.x", "names no LUN"),
            ("iscsi://host/iqn.x/one", "not a number"),
            ("iscsi://host:0/iqn.x/1", "not a port"),
            ("iscsi://u%p@host/iqn.x/1", "CHAP"),
            ("iscsi:///iqn.x/1", "no host"),
            ("iscsi://[::1/iqn.x/1", "closing"),
        ] {
            let e = IscsiUri::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
