//! The serial-console protocol of the Linux test guest's `/init`
//! (`guest-images/linux/init.sh`): marker lines around fio's JSON and stderr, and status lines.
//! Kept in step with the script by the tests in both crates.

pub const JSON_BEGIN: &str = "<<<WEIR:FIO-JSON:BEGIN>>>";
pub const JSON_END: &str = "<<<WEIR:FIO-JSON:END>>>";
pub const STDERR_BEGIN: &str = "<<<WEIR:FIO-STDERR:BEGIN>>>";
pub const STDERR_END: &str = "<<<WEIR:FIO-STDERR:END>>>";
const INIT: &str = "WEIR-GUEST-INIT ";
const DISKS: &str = "WEIR-GUEST-DISKS";
const EXIT: &str = "WEIR-FIO-EXIT=";
const WATCHDOG: &str = "WEIR-GUEST-WATCHDOG";
const GUEST_ERROR: &str = "WEIR-GUEST-ERROR ";

/// What the guest said on its console, sorted out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestTranscript {
    /// Guest uptime when `/init` started: the kernel's boot time.
    pub init_uptime_s: Option<f64>,
    pub kernel_release: Option<String>,
    /// Block devices the guest saw (`/sys/block`).
    pub disks: Vec<String>,
    /// Text between the JSON markers; `None` when the markers never both appeared.
    pub fio_output: Option<String>,
    /// fio's stderr, between its markers.
    pub fio_stderr: Option<String>,
    pub fio_exit: Option<i32>,
    /// The guest's watchdog fired: fio outlived its time.
    pub watchdog_fired: bool,
    /// `/init` could not run fio at all, and why.
    pub guest_error: Option<String>,
}

impl GuestTranscript {
    pub fn parse(log: &str) -> Self {
        let mut t = GuestTranscript::default();
        let mut block: Option<(&str, String)> = None;
        for raw in log.split('\n') {
            let line = raw.trim_end_matches('\r');
            if let Some((end, buf)) = block.as_mut() {
                if line.trim() == *end {
                    let text = std::mem::take(buf);
                    if *end == JSON_END {
                        t.fio_output = Some(text);
                    } else {
                        t.fio_stderr = Some(text);
                    }
                    block = None;
                } else {
                    buf.push_str(line);
                    buf.push('\n');
                }
                continue;
            }
            let trimmed = line.trim();
            // A begin marker may follow console noise on the same line (a progress line
            // without a newline); the block starts after it.
            if trimmed.ends_with(JSON_BEGIN) {
                block = Some((JSON_END, String::new()));
            } else if trimmed.ends_with(STDERR_BEGIN) {
                block = Some((STDERR_END, String::new()));
            } else if let Some(rest) = trimmed.strip_prefix(INIT) {
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("uptime_s", v)) => t.init_uptime_s = v.parse().ok(),
                        Some(("kernel", v)) => t.kernel_release = Some(v.to_string()),
                        _ => {}
                    }
                }
            } else if let Some(rest) = trimmed.strip_prefix(DISKS) {
                t.disks = rest.split_whitespace().map(str::to_string).collect();
            } else if let Some(rest) = trimmed.strip_prefix(EXIT) {
                // The watchdog may print its own exit line after fio's; the first one wins.
                if t.fio_exit.is_none() {
                    t.fio_exit = rest.trim().parse().ok();
                }
            } else if trimmed.starts_with(WATCHDOG) {
                t.watchdog_fired = true;
            } else if let Some(rest) = trimmed.strip_prefix(GUEST_ERROR) {
                t.guest_error = Some(rest.to_string());
            }
        }
        t
    }
}

/// The last `n` lines of a log, for error messages.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_run_with_crlf() {
        let log = "[    0.5] Linux version 6.1\r\n\
                   WEIR-GUEST-INIT uptime_s=0.73 kernel=6.1.158\r\n\
                   WEIR-GUEST-DISKS vda vdb \r\n\
                   <<<WEIR:FIO-JSON:BEGIN>>>\r\n{\r\n \"jobs\": []\r\n}\r\n<<<WEIR:FIO-JSON:END>>>\r\n\
                   <<<WEIR:FIO-STDERR:BEGIN>>>\r\n<<<WEIR:FIO-STDERR:END>>>\r\n\
                   WEIR-FIO-EXIT=0\r\n";
        let t = GuestTranscript::parse(log);
        assert_eq!(t.init_uptime_s, Some(0.73));
        assert_eq!(t.kernel_release.as_deref(), Some("6.1.158"));
        assert_eq!(t.disks, vec!["vda", "vdb"]);
        assert_eq!(t.fio_output.as_deref(), Some("{\n \"jobs\": []\n}\n"));
        assert_eq!(t.fio_stderr.as_deref(), Some(""));
        assert_eq!(t.fio_exit, Some(0));
        assert!(!t.watchdog_fired);
    }

    #[test]
    fn a_marker_after_console_noise_still_opens_the_block() {
        let log = "Jobs: 1 (f=1): [r(1)][100.0%]\r<<<WEIR:FIO-JSON:BEGIN>>>\r\n{}\r\n<<<WEIR:FIO-JSON:END>>>\r\n";
        let t = GuestTranscript::parse(log);
        assert_eq!(t.fio_output.as_deref(), Some("{}\n"));
    }

    #[test]
    fn an_unterminated_block_is_not_output() {
        let t = GuestTranscript::parse("<<<WEIR:FIO-JSON:BEGIN>>>\n{\"jobs\":\n");
        assert_eq!(t.fio_output, None);
        assert_eq!(t.fio_exit, None);
    }

    #[test]
    fn watchdog_and_guest_errors_are_recognised() {
        let t = GuestTranscript::parse(
            "WEIR-GUEST-WATCHDOG fio still running\nWEIR-FIO-EXIT=124\nWEIR-FIO-EXIT=0\n",
        );
        assert!(t.watchdog_fired);
        assert_eq!(t.fio_exit, Some(124));
        let t = GuestTranscript::parse("WEIR-GUEST-ERROR no fio job at /weir/job.fio\n");
        assert_eq!(
            t.guest_error.as_deref(),
            Some("no fio job at /weir/job.fio")
        );
    }

    #[test]
    fn markers_match_the_guest_init_script() {
        let init = weir_guest_images::recipe_init_script();
        for m in [
            JSON_BEGIN,
            JSON_END,
            STDERR_BEGIN,
            STDERR_END,
            INIT.trim(),
            DISKS,
            EXIT,
            WATCHDOG,
            GUEST_ERROR.trim(),
        ] {
            assert!(init.contains(m), "init.sh lacks {m}");
        }
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\r\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
