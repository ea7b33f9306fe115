//! Command lines of the two services: cri-o's fixed flags and the kubelet's
//! flags derived from /etc/kubernetes exactly like the original init, plus
//! the node-labels parser.
//!
//! node-labels semantics (the original's, made explicit): `#` starts a
//! comment anywhere on a line; the first `:` separates key and value; every
//! other character outside A-Z a-z 0-9 . _ - / is dropped (so whitespace,
//! quotes, a second ':' vanish), as the original's character filter did.
//! Decision on lines the original left undefined: a line without `:` or
//! with an empty key (after filtering) is skipped. Every dropped character
//! and skipped line is a warning in the kernel log naming the line, so a
//! typo is visible. Only a file with more than [`LABEL_LIMIT`] labels is an
//! error: the kubelet then starts without `--node-labels`.

use std::path::Path;

/// Largest /etc/kubernetes input read (labels, node-ip).
pub const INPUT_LIMIT: usize = 64 * 1024;
/// Most labels accepted from node-labels.
pub const LABEL_LIMIT: usize = 256;

/// The cri-o command line, argv[0] = /bin/crio.
pub fn crio_argv() -> Vec<String> {
    [
        "/bin/crio",
        "--runtimes",
        "crun:/bin/crun:/var/run/crun:oci",
        "--cgroup-manager",
        "cgroupfs",
        "--default-runtime",
        "crun",
        "--listen",
        "/var/run/crio/crio.sock",
        "--conmon",
        "/bin/conmon",
        "--conmon-cgroup",
        "pod",
        "--pinns-path",
        "/bin/pinns",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Where the credential provider binaries live.
pub const CREDENTIAL_PROVIDER_BIN_DIR: &str =
    "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec";

/// A problem in node-labels. Only [`LabelError::TooMany`] makes the file
/// unusable; the others are warnings (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("node-labels line {line}: no ':' between key and value, line skipped")]
    MissingColon { line: usize },
    #[error("node-labels line {line}: empty key, line skipped")]
    EmptyKey { line: usize },
    #[error(
        "node-labels line {line}: dropped characters {dropped:?} (allowed: A-Z a-z 0-9 . _ - /)"
    )]
    DroppedCharacters { line: usize, dropped: String },
    #[error("node-labels: more than {limit} labels")]
    TooMany { limit: usize },
}

fn label_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Labels and the warnings met parsing them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParsedLabels {
    pub labels: Vec<(String, String)>,
    pub warnings: Vec<LabelError>,
}

/// Parse node-labels with warnings; see the module docs for the rules.
pub fn parse_node_labels_detailed(text: &str) -> ParsedLabels {
    let mut out = ParsedLabels::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("");
        if content.trim().is_empty() {
            continue;
        }
        let Some((key_raw, value_raw)) = content.split_once(':') else {
            out.warnings.push(LabelError::MissingColon { line });
            continue;
        };
        let mut dropped = String::new();
        let mut filter = |part: &str| -> String {
            let mut kept = String::new();
            for c in part.chars() {
                if label_char_ok(c) {
                    kept.push(c);
                } else if !c.is_whitespace() {
                    dropped.push(c);
                }
            }
            kept
        };
        let key = filter(key_raw);
        let value = filter(value_raw);
        if !dropped.is_empty() {
            out.warnings
                .push(LabelError::DroppedCharacters { line, dropped });
        }
        if key.is_empty() {
            out.warnings.push(LabelError::EmptyKey { line });
            continue;
        }
        if out.labels.len() >= LABEL_LIMIT {
            out.warnings
                .push(LabelError::TooMany { limit: LABEL_LIMIT });
            break;
        }
        out.labels.push((key, value));
    }
    out
}

/// Parse node-labels: `key: value` per line; see the module docs. Fails
/// only when there are more than [`LABEL_LIMIT`] labels.
pub fn parse_node_labels(text: &str) -> Result<Vec<(String, String)>, LabelError> {
    let parsed = parse_node_labels_detailed(text);
    if let Some(e) = parsed
        .warnings
        .iter()
        .find(|w| matches!(w, LabelError::TooMany { .. }))
    {
        return Err(e.clone());
    }
    Ok(parsed.labels)
}

/// Why node-ip gives no `--node-ip`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIpError {
    #[error("node-ip is empty")]
    Empty,
    #[error("node-ip: whitespace inside {0:?}")]
    Whitespace(String),
}

/// The `--node-ip` value of node-ip's text: its first line, trimmed, with
/// no whitespace inside (the kubelet would refuse it).
pub fn parse_node_ip(text: &str) -> Result<&str, NodeIpError> {
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        Err(NodeIpError::Empty)
    } else if first.chars().any(char::is_whitespace) {
        Err(NodeIpError::Whitespace(first.to_string()))
    } else {
        Ok(first)
    }
}

/// What the kubelet argv derivation noticed, for the kernel log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KubeletArgv {
    pub argv: Vec<String>,
    pub warnings: Vec<String>,
}

fn read_text(path: &Path) -> Result<Option<String>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("stat {}: {e}", path.display())),
        Ok(m) if m.len() > INPUT_LIMIT as u64 => {
            return Err(format!(
                "read {}: larger than {INPUT_LIMIT} bytes",
                path.display()
            ))
        }
        Ok(_) => {}
    }
    std::fs::read(path)
        .map(|b| Some(String::from_utf8_lossy(&b).into_owned()))
        .map_err(|e| format!("read {}: {e}", path.display()))
}

/// The kubelet command line and the problems met deriving it.
pub fn derive_kubelet_argv(etc_kubernetes: &Path) -> KubeletArgv {
    let mut r = KubeletArgv::default();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    r.argv.push("/bin/kubelet".into());
    r.argv.push("--config".into());
    r.argv.push(s(&etc_kubernetes.join("config.yaml")));

    let labels_path = etc_kubernetes.join("node-labels");
    match read_text(&labels_path) {
        Ok(None) => {}
        Ok(Some(text)) => {
            let parsed = parse_node_labels_detailed(&text);
            let too_many = parsed
                .warnings
                .iter()
                .any(|w| matches!(w, LabelError::TooMany { .. }));
            for w in &parsed.warnings {
                r.warnings.push(format!("{w} in {}", labels_path.display()));
            }
            if too_many {
                r.warnings
                    .push("starting the kubelet without --node-labels".into());
            } else if !parsed.labels.is_empty() {
                let joined: Vec<String> = parsed
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                r.argv.push("--node-labels".into());
                r.argv.push(joined.join(","));
            }
        }
        Err(e) => r
            .warnings
            .push(format!("{e}; starting the kubelet without --node-labels")),
    }

    let ip_path = etc_kubernetes.join("node-ip");
    match read_text(&ip_path) {
        Ok(None) => {}
        Ok(Some(text)) => match parse_node_ip(&text) {
            Ok(ip) => {
                r.argv.push("--node-ip".into());
                r.argv.push(ip.to_string());
            }
            Err(NodeIpError::Empty) => r
                .warnings
                .push(format!("{} is empty; no --node-ip", ip_path.display())),
            Err(NodeIpError::Whitespace(first)) => r.warnings.push(format!(
                "{}: whitespace inside {first:?}; no --node-ip",
                ip_path.display()
            )),
        },
        Err(e) => r.warnings.push(format!("{e}; no --node-ip")),
    }

    let kubeconfig = etc_kubernetes.join("kubelet.conf");
    if kubeconfig.exists() {
        r.argv.push("--kubeconfig".into());
        r.argv.push(s(&kubeconfig));
    }
    let bootstrap = etc_kubernetes.join("bootstrap-kubelet.conf");
    if bootstrap.exists() {
        r.argv.push("--bootstrap-kubeconfig".into());
        r.argv.push(s(&bootstrap));
    }
    let providers = etc_kubernetes.join("credential-providers.yaml");
    if providers.exists() {
        r.argv.push("--image-credential-provider-config".into());
        r.argv.push(s(&providers));
        r.argv.push("--image-credential-provider-bin-dir".into());
        r.argv.push(CREDENTIAL_PROVIDER_BIN_DIR.into());
    }
    r
}

/// The kubelet command line derived from `etc_kubernetes` (normally
/// /etc/kubernetes); problems are logged to the kernel log at error level.
pub fn kubelet_argv(etc_kubernetes: &Path) -> Vec<String> {
    let r = derive_kubelet_argv(etc_kubernetes);
    for w in &r.warnings {
        crate::kerr!("{w}");
    }
    r.argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Result<Vec<(String, String)>, LabelError> {
        parse_node_labels(text)
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn crio_argv_is_exactly_the_original() {
        assert_eq!(
            crio_argv().join(" "),
            "/bin/crio --runtimes crun:/bin/crun:/var/run/crun:oci --cgroup-manager cgroupfs \
             --default-runtime crun --listen /var/run/crio/crio.sock --conmon /bin/conmon \
             --conmon-cgroup pod --pinns-path /bin/pinns"
        );
    }

    #[test]
    fn label_parser_table() {
        let ok: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("\n\n   \n", &[]),
            ("# only a comment\n", &[]),
            ("a: b", &[("a", "b")]),
            ("a:b", &[("a", "b")]),
            ("  a  :   b  \n", &[("a", "b")]),
            ("a: b # trailing comment", &[("a", "b")]),
            ("a: b#x", &[("a", "b")]),
            (
                "kubernetes.io/role: worker\nzone: eu-1_a\n",
                &[("kubernetes.io/role", "worker"), ("zone", "eu-1_a")],
            ),
            ("a:\n", &[("a", "")]),
            ("A.b_c-d/E: 0.9_x-Y/z", &[("A.b_c-d/E", "0.9_x-Y/z")]),
            ("#a: b\nc: d", &[("c", "d")]),
            ("a: b\r\nc: d\r\n", &[("a", "b"), ("c", "d")]),
            ("te am : a b", &[("team", "ab")]),
            (
                "tier: \"gold\"\nzone: 'eu-1'!\n",
                &[("tier", "gold"), ("zone", "eu-1")],
            ),
            ("a: b: c", &[("a", "bc")]),
            ("no colon here\nok: 1\n", &[("ok", "1")]),
            (": b\n!!: c\nk: v", &[("k", "v")]),
            ("ä: b", &[]),
        ];
        for (input, want) in ok {
            assert_eq!(parse_node_labels(input), Ok(kv(want)), "input {input:?}");
        }
    }

    #[test]
    fn label_warnings_name_the_line() {
        let p = parse_node_labels_detailed("ok: 1\nno colon\n: x\nq: \"v\"\n");
        assert_eq!(p.labels, kv(&[("ok", "1"), ("q", "v")]));
        assert_eq!(
            p.warnings,
            [
                LabelError::MissingColon { line: 2 },
                LabelError::EmptyKey { line: 3 },
                LabelError::DroppedCharacters {
                    line: 4,
                    dropped: "\"\"".into()
                },
            ]
        );
    }

    #[test]
    fn label_count_is_bounded() {
        let text: String = (0..=LABEL_LIMIT).map(|i| format!("k{i}: v\n")).collect();
        assert_eq!(
            labels(&text),
            Err(LabelError::TooMany { limit: LABEL_LIMIT })
        );
        let text: String = (0..LABEL_LIMIT).map(|i| format!("k{i}: v\n")).collect();
        assert_eq!(labels(&text).map(|l| l.len()), Ok(LABEL_LIMIT));
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kios-argv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        d
    }

    #[test]
    fn kubelet_argv_table() {
        // (files to create, expected argv after "--config <dir>/config.yaml")
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
            usize,
        );
        let cases: &[Case] = &[
            ("none", &[], &[], 0),
            (
                "labels",
                &[("node-labels", "a: b\nc: d # x\n")],
                &["--node-labels", "a=b,c=d"],
                0,
            ),
            ("labels-empty", &[("node-labels", "# nothing\n")], &[], 0),
            (
                "labels-bad-line",
                &[("node-labels", "a: b\nbad line\n")],
                &["--node-labels", "a=b"],
                1,
            ),
            (
                "ip",
                &[("node-ip", "  10.0.0.5  \nignored\n")],
                &["--node-ip", "10.0.0.5"],
                0,
            ),
            ("ip-empty", &[("node-ip", "\n")], &[], 1),
            (
                "kubeconfig",
                &[("kubelet.conf", "x")],
                &["--kubeconfig", "@/kubelet.conf"],
                0,
            ),
            (
                "bootstrap",
                &[("bootstrap-kubelet.conf", "x")],
                &["--bootstrap-kubeconfig", "@/bootstrap-kubelet.conf"],
                0,
            ),
            (
                "creds",
                &[("credential-providers.yaml", "x")],
                &[
                    "--image-credential-provider-config",
                    "@/credential-providers.yaml",
                    "--image-credential-provider-bin-dir",
                    CREDENTIAL_PROVIDER_BIN_DIR,
                ],
                0,
            ),
            (
                "all",
                &[
                    ("node-labels", "role: worker"),
                    ("node-ip", "fd00::1"),
                    ("kubelet.conf", "x"),
                    ("bootstrap-kubelet.conf", "x"),
                    ("credential-providers.yaml", "x"),
                ],
                &[
                    "--node-labels",
                    "role=worker",
                    "--node-ip",
                    "fd00::1",
                    "--kubeconfig",
                    "@/kubelet.conf",
                    "--bootstrap-kubeconfig",
                    "@/bootstrap-kubelet.conf",
                    "--image-credential-provider-config",
                    "@/credential-providers.yaml",
                    "--image-credential-provider-bin-dir",
                    CREDENTIAL_PROVIDER_BIN_DIR,
                ],
                0,
            ),
        ];
        for (name, files, tail, warnings) in cases {
            let dir = tempdir(name);
            for (f, content) in *files {
                std::fs::write(dir.join(f), content).expect("write input");
            }
            let d = dir.to_string_lossy().into_owned();
            let mut want = vec![
                "/bin/kubelet".to_string(),
                "--config".into(),
                format!("{d}/config.yaml"),
            ];
            want.extend(tail.iter().map(|t| t.replace('@', &d)));
            let got = derive_kubelet_argv(&dir);
            assert_eq!(got.argv, want, "case {name}");
            assert_eq!(
                got.warnings.len(),
                *warnings,
                "case {name}: {:?}",
                got.warnings
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn kubelet_argv_for_etc_kubernetes_starts_with_the_config() {
        let argv = kubelet_argv(Path::new("/nonexistent-kios/etc/kubernetes"));
        assert_eq!(
            argv,
            [
                "/bin/kubelet",
                "--config",
                "/nonexistent-kios/etc/kubernetes/config.yaml"
            ]
        );
    }

    #[test]
    fn node_ip_is_the_first_line_as_one_word() {
        assert_eq!(parse_node_ip(" 10.0.0.5 \nfd00::1\n"), Ok("10.0.0.5"));
        assert_eq!(parse_node_ip(""), Err(NodeIpError::Empty));
        assert_eq!(parse_node_ip("\n10.0.0.5"), Err(NodeIpError::Empty));
        assert_eq!(
            parse_node_ip("10.0.0.5\u{a0}x"),
            Err(NodeIpError::Whitespace("10.0.0.5\u{a0}x".into()))
        );
    }
}
