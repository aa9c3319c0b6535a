//! Scrubbing of plugin-provided text: the token must never reach a log, a metric or an answer.
//!
//! Every string a plugin hands the host (log lines, deny and unavailable reasons, trap messages,
//! stdout/stderr) goes through [`Scrubber::clean`] before it goes anywhere.

use std::collections::HashMap;

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
    /// The token's twin, an equally valid credential ([`tollgate_crypto::ecdsa_twin`]: an
    /// ES256/ES384 JWS with its signature's other encoding `(r, n - s)`): removed as the token.
    twin: Option<&'a str>,
    secrets: &'a [String],
}

impl<'a> Scrubber<'a> {
    pub fn new(token: &'a str) -> Self {
        Self { token, twin: None, secrets: &[] }
    }

    /// Also removes the token's twin and every part of it, as the token.
    pub fn with_twin(self, twin: Option<&'a str>) -> Self {
        Self { twin: twin.filter(|t| *t != self.token), ..self }
    }

    /// The token it removes.
    pub fn token(&self) -> &'a str {
        self.token
    }

    /// The token's twin it removes too, if any.
    pub fn twin(&self) -> Option<&'a str> {
        self.twin
    }

    /// The token and its twin.
    fn forms(&self) -> impl Iterator<Item = &'a str> {
        std::iter::once(self.token).chain(self.twin).filter(|t| t.len() >= MIN_SCRUB_LEN)
    }

    /// Also removes these secrets (those of [`MIN_SCRUB_LEN`] bytes or more).
    pub fn with_secrets(self, secrets: &'a [String]) -> Self {
        Self { secrets, ..self }
    }

    /// True when `text` holds the token or its twin (only for tokens of [`MIN_SCRUB_LEN`] bytes
    /// or more).
    pub fn contains_token(&self, text: &str) -> bool {
        self.forms().any(|t| text.contains(t))
    }

    /// Replaces the token and every part of it of [`MIN_SCRUB_LEN`] bytes or more (a plugin that
    /// logs the "secret half" of a token leaks it as surely as the whole), escapes control
    /// characters, then caps to `max` bytes (on a char boundary, marking the cut). The exact
    /// token and the secrets go first, from the whole text, so a cap cannot leave a fragment of
    /// one behind; parts are looked for in what is kept, so their cost is bounded by `max`.
    /// Escaping keeps a plugin's text on one line: it cannot forge log lines of its own. (A part
    /// holding a control character is not found after escaping; bearer tokens hold none, and
    /// the whole token is replaced before.)
    pub fn clean(&self, text: &str, max: usize) -> String {
        let mut scrubbed = text.to_owned();
        for form in self.forms() {
            if scrubbed.contains(form) {
                scrubbed = scrubbed.replace(form, REDACTED);
            }
        }
        for secret in self.secrets.iter().filter(|s| s.len() >= MIN_SCRUB_LEN) {
            if scrubbed.contains(secret.as_str()) {
                scrubbed = scrubbed.replace(secret.as_str(), REDACTED_SECRET);
            }
        }
        let end = scrubbed.floor_char_boundary(max);
        let cut = scrubbed.len() - end;
        scrubbed.truncate(end);
        // Parts are looked for after escaping, so an escape cannot complete one (`\n` + 7 bytes).
        cap_counting(without_parts_of(self.forms(), one_line(scrubbed)), max, cut)
    }

    /// As [`Self::clean`], for bytes that may not be UTF-8 (guest stdout/stderr).
    pub fn clean_bytes(&self, bytes: &[u8], max: usize) -> String {
        self.clean(&String::from_utf8_lossy(bytes), max)
    }
}

/// `text` with every run that also occurs in one of `tokens` replaced by [`REDACTED`], for runs
/// of [`MIN_SCRUB_LEN`] bytes or more: each of the text's windows of that length is looked up
/// among the tokens', in one pass over each (the text is at most a cap's length; a token any).
fn without_parts_of<'t>(tokens: impl Iterator<Item = &'t str>, text: String) -> String {
    const W: usize = MIN_SCRUB_LEN;
    if text.len() < W {
        return text;
    }
    let bytes = text.as_bytes();
    let mut starts: HashMap<[u8; W], Vec<usize>> = HashMap::new();
    for (i, window) in bytes.windows(W).enumerate() {
        if let Ok(key) = <[u8; W]>::try_from(window) {
            starts.entry(key).or_default().push(i);
        }
    }
    let mut covered = vec![false; bytes.len()];
    let mut found = false;
    for window in tokens.flat_map(|token| token.as_bytes().windows(W)) {
        if starts.is_empty() {
            break;
        }
        if let Some(at) = <[u8; W]>::try_from(window).ok().and_then(|key| starts.remove(&key)) {
            for i in at {
                covered[i..i + W].fill(true);
            }
            found = true;
        }
    }
    if !found {
        return text;
    }
    // Widen each covered run to whole characters: every cut below is on a char boundary.
    let mut i = 0;
    while i < bytes.len() {
        if !covered[i] {
            i += 1;
            continue;
        }
        let start = text.floor_char_boundary(i);
        let end = text.ceil_char_boundary(covered[i..].iter().position(|&c| !c).map_or(bytes.len(), |n| i + n));
        covered[start..end].fill(true);
        i = end;
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let run = covered[i];
        let end = covered[i..].iter().position(|&c| c != run).map_or(bytes.len(), |n| i + n);
        match text.get(i..end) {
            Some(kept) if !run => out.push_str(kept),
            _ => out.push_str(REDACTED),
        }
        i = end;
    }
    out
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
pub fn cap(text: String, max: usize) -> String {
    cap_counting(text, max, 0)
}

/// As [`cap`], the marker also counting the `already` bytes an earlier cut dropped.
fn cap_counting(mut text: String, max: usize, already: usize) -> String {
    let end = text.floor_char_boundary(max);
    let dropped = text.len() - end + already;
    if dropped == 0 {
        return text;
    }
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
    fn parts_of_the_token_are_scrubbed_too() {
        let s = Scrubber::new("team-qa-0123abcd");
        assert_eq!(s.clean("suffix qa-0123abcd, prefix team-qa-", 100), "suffix [token], prefix [token]");
        // Shorter than MIN_SCRUB_LEN: ordinary words stay.
        assert_eq!(s.clean("team qa 0123", 100), "team qa 0123");
        // Runs that touch are one; multi-byte characters are never split.
        let s = Scrubber::new("ééééabcdefgh");
        assert_eq!(s.clean("xéééabcdefghé", 100), "x[token]é");
        // A part cut by the cap is still a part.
        let s = Scrubber::new("0123456789abcdef");
        let out = s.clean("xx0123456789", 10);
        assert!(!out.contains("01234567"), "{out}");
        assert!(out.ends_with("…[2 bytes cut]"), "{out}");
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
    fn the_twin_of_a_token_is_scrubbed_as_the_token() {
        let (token, twin) = ("hdr.pay.high-s-signature", "hdr.pay.low-s-signature!");
        let s = Scrubber::new(token).with_twin(Some(twin));
        assert!(s.contains_token(&format!("user-{twin}")) && s.contains_token(token));
        assert_eq!(s.clean(&format!("a {twin} b {token} c"), 100), "a [token] b [token] c");
        // Parts of either: the twin's signature alone is a part of the twin.
        assert_eq!(s.clean("sig low-s-signature! end", 100), "sig [token] end");
        assert_eq!(s.clean("sig high-s-signature end", 100), "sig [token] end");
        // No twin, or one that is the token itself: only the token.
        assert!(!Scrubber::new(token).contains_token(twin));
        assert_eq!(Scrubber::new(token).with_twin(Some(token)).twin(), None);
    }

    #[test]
    fn empty_token_never_matches() {
        let s = Scrubber::new("");
        assert_eq!(s.clean("anything", 100), "anything");
    }
}
