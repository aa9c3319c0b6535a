//! Scrubbing of plugin-provided text: the token must never reach a log, a metric or an answer.
//!
//! Every string a plugin hands the host (log lines, deny and unavailable reasons, trap messages,
//! stdout/stderr) goes through [`Scrubber::clean`] before it goes anywhere.

/// Tokens shorter than this are not scrubbed: real bearer tokens are long, and a short one would
/// match ordinary words ("admin") all over the logs. The same bound applies to the
/// token-in-grant check.
pub const MIN_SCRUB_LEN: usize = 8;

/// What replaces each occurrence of the token.
pub const REDACTED: &str = "[token]";

/// What replaces each occurrence of a plugin's secret (a `secret_files` value).
pub const REDACTED_SECRET: &str = "[secret]";

/// Removes one review's token (and the plugin's secrets) from text, and caps the text's length.
#[derive(Clone, Copy)]
pub struct Scrubber<'a> {
    token: &'a str,
    secrets: &'a [String],
}

impl<'a> Scrubber<'a> {
    pub fn new(token: &'a str) -> Self {
        Self { token, secrets: &[] }
    }

    /// Also removes these secrets (those of [`MIN_SCRUB_LEN`] bytes or more).
    pub fn with_secrets(self, secrets: &'a [String]) -> Self {
        Self { secrets, ..self }
    }

    /// True when `text` holds the token (only for tokens of [`MIN_SCRUB_LEN`] bytes or more).
    pub fn contains_token(&self, text: &str) -> bool {
        self.token.len() >= MIN_SCRUB_LEN && text.contains(self.token)
    }

    /// Replaces the token, escapes control characters, then caps to `max` bytes (on a char
    /// boundary, marking the cut). Scrubbing comes first so that neither an escape nor a cap can
    /// leave a fragment of the token behind; escaping keeps a plugin's text on one line, so it
    /// cannot forge log lines of its own in the text log format.
    pub fn clean(&self, text: &str, max: usize) -> String {
        let mut scrubbed = if self.contains_token(text) { text.replace(self.token, REDACTED) } else { text.to_owned() };
        for secret in self.secrets.iter().filter(|s| s.len() >= MIN_SCRUB_LEN) {
            if scrubbed.contains(secret.as_str()) {
                scrubbed = scrubbed.replace(secret.as_str(), REDACTED_SECRET);
            }
        }
        cap(one_line(scrubbed), max)
    }

    /// As [`Self::clean`], for bytes that may not be UTF-8 (guest stdout/stderr).
    pub fn clean_bytes(&self, bytes: &[u8], max: usize) -> String {
        self.clean(&String::from_utf8_lossy(bytes), max)
    }
}

/// `text` with its control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`...).
pub fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Caps `text` to at most `max` bytes plus a short marker, cutting on a char boundary.
pub fn cap(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("…[{dropped} bytes cut]"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_text_stays_on_one_line() {
        let s = Scrubber::new("tok-with\nnewline");
        let forged = "ok\n2026-11-30T00:00:00Z  INFO tollgate::reload: generation live\r\x1b[31m";
        let clean = s.clean(forged, 1000);
        assert!(!clean.chars().any(char::is_control), "{clean}");
        assert!(clean.starts_with("ok\\n2026-11-30"), "{clean}");
        assert_eq!(s.clean("a tok-with\nnewline b", 100), "a [token] b", "scrubbed before it is escaped");
    }

    #[test]
    fn replaces_every_occurrence_before_capping() {
        let s = Scrubber::new("s3cr3t-t0ken");
        assert_eq!(s.clean("a s3cr3t-t0ken b s3cr3t-t0ken", 100), "a [token] b [token]");
        // A cap that falls inside the token must not leave a prefix of it.
        let out = s.clean("xxxxs3cr3t-t0ken", 8);
        assert!(!out.contains("s3cr"), "{out}");
    }

    #[test]
    fn short_tokens_are_not_scrubbed() {
        let s = Scrubber::new("admin");
        assert_eq!(s.clean("admin panel", 100), "admin panel");
        assert!(!s.contains_token("admin"));
    }

    #[test]
    fn cap_respects_char_boundaries() {
        let out = cap("ééééé".to_string(), 3);
        assert!(out.starts_with('é'));
        assert!(out.contains("bytes cut"));
    }

    #[test]
    fn secrets_are_scrubbed_too() {
        let secrets = vec!["client-secret-value".to_string(), "short".to_string()];
        let s = Scrubber::new("the-token-123").with_secrets(&secrets);
        assert_eq!(s.clean("the-token-123 client-secret-value short", 100), "[token] [secret] short");
    }

    #[test]
    fn empty_token_never_matches() {
        let s = Scrubber::new("");
        assert_eq!(s.clean("anything", 100), "anything");
    }
}
