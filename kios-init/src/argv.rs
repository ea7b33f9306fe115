//! Command lines of the two services: cri-o's fixed flags and the kubelet's
//! flags derived from /etc/kubernetes exactly like the original init, plus
//! the node-labels parser.
//!
//! Decision on invalid node-labels: the file is all or nothing. One bad
//! line makes [`parse_node_labels`] fail with its line number, and the
//! kubelet then starts WITHOUT `--node-labels` (and the error goes to the
//! kernel log): bad input changes nothing rather than half-applying labels.

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

/// A node-labels line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("node-labels line {line}: missing ':' between key and value")]
    MissingColon { line: usize },
    #[error("node-labels line {line}: empty key")]
    EmptyKey { line: usize },
    #[error("node-labels line {line}: invalid character {ch:?} (allowed: A-Z a-z 0-9 . _ - /)")]
    InvalidCharacter { line: usize, ch: char },
    #[error("node-labels: more than {limit} labels")]
    TooMany { limit: usize },
}

fn label_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

fn check_label_part(part: &str, line: usize) -> Result<(), LabelError> {
    match part.chars().find(|c| !label_char_ok(*c)) {
        Some(ch) => Err(LabelError::InvalidCharacter { line, ch }),
        None => Ok(()),
    }
}

/// Parse node-labels: `key: value` per line; `#` starts a comment anywhere;
/// blank lines and surrounding whitespace ignored; keys and values only
/// use A-Z a-z 0-9 . _ - /; a value may be empty. Line numbers start at 1.
pub fn parse_node_labels(text: &str) -> Result<Vec<(String, String)>, LabelError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (key, value) = content
            .split_once(':')
            .ok_or(LabelError::MissingColon { line })?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(LabelError::EmptyKey { line });
        }
        check_label_part(key, line)?;
        check_label_part(value, line)?;
        if out.len() >= LABEL_LIMIT {
            return Err(LabelError::TooMany { limit: LABEL_LIMIT });
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
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
        Ok(Some(text)) => match parse_node_labels(&text) {
            Ok(labels) if labels.is_empty() => {}
            Ok(labels) => {
                let joined: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                r.argv.push("--node-labels".into());
                r.argv.push(joined.join(","));
            }
            Err(e) => r.warnings.push(format!(
                "{e} in {}; starting the kubelet without --node-labels",
                labels_path.display()
            )),
        },
        Err(e) => r
            .warnings
            .push(format!("{e}; starting the kubelet without --node-labels")),
    }

    let ip_path = etc_kubernetes.join("node-ip");
    match read_text(&ip_path) {
        Ok(None) => {}
        Ok(Some(text)) => {
            let first = text.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                r.warnings
                    .push(format!("{} is empty; no --node-ip", ip_path.display()));
            } else if first.chars().any(char::is_whitespace) {
                r.warnings.push(format!(
                    "{}: whitespace inside {first:?}; no --node-ip",
                    ip_path.display()
                ));
            } else {
                r.argv.push("--node-ip".into());
                r.argv.push(first.to_string());
            }
        }
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
        ];
        for (input, want) in ok {
            assert_eq!(labels(input), Ok(kv(want)), "input {input:?}");
        }
        let bad: &[(&str, LabelError)] = &[
            ("a b", LabelError::MissingColon { line: 1 }),
            ("ok: 1\nnocolon", LabelError::MissingColon { line: 2 }),
            (": b", LabelError::EmptyKey { line: 1 }),
            ("a: b c", LabelError::InvalidCharacter { line: 1, ch: ' ' }),
            ("a: b: c", LabelError::InvalidCharacter { line: 1, ch: ':' }),
            ("a=b: c", LabelError::InvalidCharacter { line: 1, ch: '=' }),
            ("a: b,c", LabelError::InvalidCharacter { line: 1, ch: ',' }),
            ("ä: b", LabelError::InvalidCharacter { line: 1, ch: 'ä' }),
        ];
        for (input, want) in bad {
            assert_eq!(labels(input).as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn label_count_is_bounded() {
        let text: String = (0..=LABEL_LIMIT).map(|i| format!("k{i}: v\n")).collect();
        assert_eq!(
            labels(&text),
            Err(LabelError::TooMany { limit: LABEL_LIMIT })
        );
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
            ("labels-bad", &[("node-labels", "a: b\nbad line\n")], &[], 1),
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
}
