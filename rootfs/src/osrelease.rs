//! The image's os-release (`/etc/os-release`): the text the builder writes
//! and the two fields kios-init reads back at boot for `kiosctl version`.
//! Pure: no I/O.

/// Largest os-release kios-init reads.
pub const OS_RELEASE_LIMIT: usize = 16 * 1024;

/// The version and build of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRelease {
    /// `VERSION_ID`.
    pub version: Option<String>,
    /// `BUILD_ID`.
    pub build_id: Option<String>,
}

impl ImageRelease {
    /// Reads `VERSION_ID` and `BUILD_ID` from os-release text (`KEY=value`
    /// lines, values optionally in double or single quotes; the last
    /// occurrence wins; empty values and values over 64 bytes or with
    /// control characters are ignored).
    pub fn parse(text: &str) -> ImageRelease {
        let mut release = ImageRelease::default();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            let value = value.trim();
            let value = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
                continue;
            }
            match key.trim() {
                "VERSION_ID" => release.version = Some(value.to_owned()),
                "BUILD_ID" => release.build_id = Some(value.to_owned()),
                _ => {}
            }
        }
        release
    }

    /// The os-release file of a kiOS image with this version and build id.
    pub fn os_release_text(version: &str, build_id: &str) -> String {
        format!(
            "NAME=\"kiOS\"\nID=kios\nPRETTY_NAME=\"kiOS {version} (Kubernetes node OS)\"\n\
             VERSION=\"{version}\"\nVERSION_ID=\"{version}\"\nBUILD_ID=\"{build_id}\"\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_the_builder_writes() {
        let text = ImageRelease::os_release_text("1.2.3", "0123456789abcdef");
        assert_eq!(
            ImageRelease::parse(&text),
            ImageRelease {
                version: Some("1.2.3".into()),
                build_id: Some("0123456789abcdef".into()),
            }
        );
    }

    #[test]
    fn quotes_last_wins_and_bad_values() {
        let r = ImageRelease::parse("VERSION_ID=1\nVERSION_ID='2'\nBUILD_ID=\"\"\n# c\nnoise\n");
        assert_eq!(r.version.as_deref(), Some("2"));
        assert_eq!(r.build_id, None);
        let long = format!("BUILD_ID={}", "x".repeat(65));
        assert_eq!(ImageRelease::parse(&long).build_id, None);
        assert_eq!(ImageRelease::parse(""), ImageRelease::default());
    }
}
