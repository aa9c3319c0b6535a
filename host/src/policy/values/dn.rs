//! Distinguished names as RFC 4514 writes them (`CN=apiserver,O=acme`): parsed from the tenants
//! file's `clients` entries, read from a verified certificate's subject as it is encoded, compared
//! attribute by attribute, and written back escaped. Never compared as text: a CN spelled
//! `apiserver,O=acme` is one attribute, and written `CN=apiserver\,O=acme`. Imports nothing of
//! tollgate.

use anyhow::{Result, bail};
use x509_parser::asn1_rs::{Any, FromDer, Tag, ToDer};

/// RFC 4514 §3's short names and their OIDs; any other type is written as its dotted OID.
const SHORT_NAMES: [(&str, &str); 9] = [
    ("CN", "2.5.4.3"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("C", "2.5.4.6"),
    ("STREET", "2.5.4.9"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
];

const COMMON_NAME: &str = "2.5.4.3";

/// An attribute's value: its text when it is encoded as one of the string types x509-parser
/// reads as text (UTF8String, PrintableString, IA5String, NumericString), otherwise its whole DER
/// encoding (RFC 4514's `#hex` form). Text compares exactly: case and spaces count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Text(String),
    Der(Vec<u8>),
}

impl Value {
    /// The value of a DER attribute value; `None` only if it cannot be encoded again.
    fn of(any: &Any) -> Option<Value> {
        let text = matches!(any.tag(), Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString);
        match std::str::from_utf8(any.data) {
            Ok(s) if text => Some(Value::Text(s.to_owned())),
            _ => any.to_der_vec().ok().map(Value::Der),
        }
    }
}

/// One attribute: its type as a dotted OID, and its value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attribute {
    pub oid: String,
    pub value: Value,
}

/// A distinguished name: its RDNs most specific first (RFC 4514's order, the reverse of the
/// certificate's). Two names are equal when their RDNs are, in order; an RDN is a set
/// (`CN=a+O=b` is `O=b+CN=a`).
#[derive(Clone, Debug)]
pub struct Dn {
    rdns: Vec<Vec<Attribute>>,
}

impl PartialEq for Dn {
    fn eq(&self, other: &Dn) -> bool {
        fn sorted(rdn: &[Attribute]) -> Vec<&Attribute> {
            let mut v: Vec<&Attribute> = rdn.iter().collect();
            v.sort();
            v
        }
        self.rdns.len() == other.rdns.len()
            && self.rdns.iter().zip(&other.rdns).all(|(a, b)| a.len() == b.len() && sorted(a) == sorted(b))
    }
}

impl Eq for Dn {}

impl Dn {
    /// A certificate's subject (or issuer), as encoded; `None` for a value that cannot be
    /// encoded again (never seen from a parsed certificate).
    pub fn from_x509(name: &x509_parser::x509::X509Name) -> Option<Dn> {
        let mut rdns = name
            .iter()
            .map(|rdn| {
                rdn.iter()
                    .map(|a| Some(Attribute { oid: a.attr_type().to_id_string(), value: Value::of(a.attr_value())? }))
                    .collect::<Option<Vec<_>>>()
            })
            .collect::<Option<Vec<_>>>()?;
        rdns.reverse();
        Some(Dn { rdns })
    }

    /// Parses an RFC 4514 string strictly: no spaces around `,` `+` `=`, special characters
    /// escaped, types case-insensitive (RFC 4514's short names or dotted OIDs). The empty name is
    /// refused: it would name a certificate with an empty subject.
    pub fn parse(text: &str) -> Result<Dn> {
        if text.is_empty() {
            bail!("the empty name names no client");
        }
        let b = text.as_bytes();
        let mut at = 0;
        let mut rdns = Vec::new();
        loop {
            let mut rdn = Vec::new();
            loop {
                let (attr, next) = attribute(text, at)?;
                rdn.push(attr);
                at = next;
                if b.get(at) != Some(&b'+') {
                    break;
                }
                at += 1;
            }
            rdns.push(rdn);
            // A value ends at `,`, `+` or the end, and `+` was taken above.
            if at >= b.len() {
                return Ok(Dn { rdns });
            }
            at += 1;
        }
    }

    /// The value of the one attribute of a name that is exactly `CN=<value>`.
    pub fn bare_common_name(&self) -> Option<&Value> {
        match self.rdns.as_slice() {
            [rdn] => match rdn.as_slice() {
                [a] if a.oid == COMMON_NAME => Some(&a.value),
                _ => None,
            },
            _ => None,
        }
    }

    /// The value of the name's CN when it has exactly one (none or several: `None`).
    pub fn only_common_name(&self) -> Option<&Value> {
        let mut cns = self.rdns.iter().flatten().filter(|a| a.oid == COMMON_NAME);
        match (cns.next(), cns.next()) {
            (Some(cn), None) => Some(&cn.value),
            _ => None,
        }
    }
}

/// The attribute at `at` (`type=value`) and where it ends.
fn attribute(text: &str, start: usize) -> Result<(Attribute, usize)> {
    let b = text.as_bytes();
    let mut at = start;
    while at < b.len() && !matches!(b[at], b'=' | b',' | b'+') {
        at += 1;
    }
    let ty = &text[start..at];
    if b.get(at) != Some(&b'=') {
        bail!("{ty:?} at position {start} is not type=value");
    }
    let oid = attribute_type(ty).map_err(|e| anyhow::anyhow!("at position {start}: {e}"))?;
    at += 1;
    let (value, end) = if b.get(at) == Some(&b'#') { hex_value(text, at + 1)? } else { string_value(text, at)? };
    Ok((Attribute { oid, value }, end))
}

/// A type's OID: one of RFC 4514's short names (any case), or a dotted OID.
fn attribute_type(ty: &str) -> Result<String> {
    if ty.starts_with(|c: char| c.is_ascii_digit()) {
        let numbers: Vec<&str> = ty.split('.').collect();
        let number =
            |n: &&str| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && (n.len() == 1 || !n.starts_with('0'));
        if numbers.len() < 2 || !numbers.iter().all(number) {
            bail!("attribute type {ty:?} is not a dotted OID");
        }
        return Ok(ty.to_owned());
    }
    if let Some((_, oid)) = SHORT_NAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(ty)) {
        return Ok((*oid).to_owned());
    }
    let names: Vec<&str> = SHORT_NAMES.iter().map(|(n, _)| *n).collect();
    bail!(
        "unknown attribute type {ty:?} (RFC 4514 allows no space around , + =; the types are {} or dotted OIDs)",
        names.join(", ")
    )
}

/// A `#hex` value (the hex digits from `at`): one DER value.
fn hex_value(text: &str, start: usize) -> Result<(Value, usize)> {
    let b = text.as_bytes();
    let mut at = start;
    while at < b.len() && !matches!(b[at], b',' | b'+') {
        at += 1;
    }
    let digits = &text[start..at];
    if digits.is_empty() || digits.len() % 2 == 1 || !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("the value at position {} is # and not an even number of hex digits", start - 1);
    }
    let der = hex::decode(digits)?;
    let value = match Any::from_der(&der) {
        Ok((&[], any)) => Value::of(&any),
        _ => None,
    };
    match value {
        Some(value) => Ok((value, at)),
        None => bail!("the value at position {} is not one DER value", start - 1),
    }
}

/// A string value from `at`, unescaped (RFC 4514 §3: `\` before a special character, or two hex
/// digits of a UTF-8 byte).
fn string_value(text: &str, start: usize) -> Result<(Value, usize)> {
    let b = text.as_bytes();
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
    let mut out = Vec::new();
    let mut at = start;
    let mut escaped_last = false;
    while let Some(&c) = b.get(at) {
        match c {
            b',' | b'+' => break,
            b'\\' => {
                if let Some(&e) = b.get(at + 1).filter(|e| b"\"+,;<>\\ #=".contains(*e)) {
                    out.push(e);
                    at += 2;
                } else if let (Some(hi), Some(lo)) = (hex(b.get(at + 1)), hex(b.get(at + 2))) {
                    out.push((hi * 16 + lo) as u8);
                    at += 3;
                } else {
                    bail!("the \\ at position {at} escapes nothing (write \\\\ for a backslash)");
                }
                escaped_last = true;
            }
            b'"' | b';' | b'<' | b'>' | 0 => bail!("{:?} at position {at} must be escaped", c as char),
            b' ' if at == start => bail!("a leading space (position {at}) must be escaped"),
            _ => {
                out.push(c);
                at += 1;
                escaped_last = false;
            }
        }
    }
    if out.last() == Some(&b' ') && !escaped_last {
        bail!("a trailing space (position {}) must be escaped", at - 1);
    }
    let text = String::from_utf8(out).map_err(|_| anyhow::anyhow!("the value at position {start} is not UTF-8"))?;
    Ok((Value::Text(text), at))
}

impl std::fmt::Display for Dn {
    /// RFC 4514 §2: short names where they exist, special characters escaped, and control
    /// characters as hex, so the text is printable and parses back to the same name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            for (j, a) in rdn.iter().enumerate() {
                if j > 0 {
                    f.write_str("+")?;
                }
                let name = SHORT_NAMES.iter().find(|(_, oid)| *oid == a.oid).map_or(a.oid.as_str(), |(n, _)| *n);
                write!(f, "{name}=")?;
                match &a.value {
                    Value::Text(s) => write_escaped(f, s)?,
                    Value::Der(der) => write!(f, "#{}", hex::encode(der))?,
                }
            }
        }
        Ok(())
    }
}

fn write_escaped(f: &mut std::fmt::Formatter<'_>, s: &str) -> std::fmt::Result {
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => write!(f, "\\{c}")?,
            ' ' if i == 0 || i == last => f.write_str("\\ ")?,
            '#' if i == 0 => f.write_str("\\#")?,
            c if c.is_control() => {
                for byte in c.to_string().bytes() {
                    write!(f, "\\{byte:02x}")?;
                }
            }
            c => write!(f, "{c}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn attr(oid: &str, value: &str) -> Attribute {
        Attribute { oid: oid.into(), value: text(value) }
    }

    #[test]
    fn names_parse_attribute_by_attribute() {
        let dn = Dn::parse("CN=apiserver,O=acme-control-plane").unwrap();
        assert_eq!(dn.rdns, vec![vec![attr("2.5.4.3", "apiserver")], vec![attr("2.5.4.10", "acme-control-plane")]]);
        // Escaped, the same characters are one value.
        let one = Dn::parse(r"CN=apiserver\,O=acme-control-plane").unwrap();
        assert_eq!(one.rdns, vec![vec![attr("2.5.4.3", "apiserver,O=acme-control-plane")]]);
        assert_ne!(dn, one);
        // Types in any case, or as OIDs; an RDN is a set.
        assert_eq!(Dn::parse("cn=apiserver,2.5.4.10=acme-control-plane").unwrap(), dn);
        assert_eq!(Dn::parse("CN=a+O=b").unwrap(), Dn::parse("O=b+CN=a").unwrap());
        assert_ne!(Dn::parse("CN=a+O=b").unwrap(), Dn::parse("CN=a,O=b").unwrap());
        assert_ne!(Dn::parse("CN=a,O=b").unwrap(), Dn::parse("O=b,CN=a").unwrap(), "order counts");
        // Hex escapes are UTF-8 bytes; every special character, escaped.
        assert_eq!(Dn::parse(r"CN=caf\c3\a9").unwrap().rdns[0][0].value, text("café"));
        assert_eq!(Dn::parse(r#"CN=\"\+\,\;\<\>\\\ \#\="#).unwrap().rdns[0][0].value, text("\"+,;<>\\ #="));
        assert_eq!(Dn::parse(r"CN=\ a b\ ").unwrap().rdns[0][0].value, text(" a b "));
        assert_eq!(Dn::parse("CN=a=b#c").unwrap().rdns[0][0].value, text("a=b#c"));
        // `#` and DER: a UTF8String is its text; another encoding stays DER.
        assert_eq!(Dn::parse("CN=#0c0161").unwrap(), Dn::parse("CN=a").unwrap());
        assert_eq!(Dn::parse("CN=#1e020061").unwrap().rdns[0][0].value, Value::Der(vec![0x1e, 2, 0, 0x61]));
        assert_eq!(Dn::parse("DC=example,DC=com,UID=x,STREET=s,OU=u,L=l,ST=s,C=DE").unwrap().rdns.len(), 8);
    }

    #[test]
    fn what_is_not_an_rfc_4514_name_is_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("apiserver", "not type=value"),
            ("CN=a, O=b", "no space around"),
            (" CN=a", "no space around"),
            ("CN =a", "no space around"),
            ("CN= a", "leading space"),
            ("CN=a ", "trailing space"),
            ("CN=a;O=b", "must be escaped"),
            ("CN=a\"b", "must be escaped"),
            ("CN=<a>", "must be escaped"),
            ("CN=a\0", "must be escaped"),
            ("CN=a\\", "escapes nothing"),
            ("CN=a\\x", "escapes nothing"),
            ("CN=\\ff", "not UTF-8"),
            ("CN=a,", "not type=value"),
            ("CN=a,,O=b", "not type=value"),
            ("CN=a+", "not type=value"),
            ("XX=a", "unknown attribute type"),
            ("OID.2.5.4.3=a", "unknown attribute type"),
            ("2.5.04.3=a", "not a dotted OID"),
            ("2=a", "not a dotted OID"),
            ("CN=#", "hex digits"),
            ("CN=#0c01", "not one DER value"),
            ("CN=#0c016100", "not one DER value"),
            ("CN=#zz", "hex digits"),
        ] {
            let got = Dn::parse(bad).map(|d| d.to_string());
            assert!(got.as_ref().is_err_and(|e| format!("{e:#}").contains(why)), "{bad:?}: {got:?}");
        }
    }

    #[test]
    fn names_are_written_escaped_and_parse_back() {
        for (value, written) in [
            ("apiserver,O=acme", r"CN=apiserver\,O=acme"),
            ("a+b", r"CN=a\+b"),
            (r#""<q>";\"#, r#"CN=\"\<q\>\"\;\\"#),
            ("#lead", r"CN=\#lead"),
            (" both ", r"CN=\ both\ "),
            (" ", r"CN=\ "),
            ("mid#dle sp", "CN=mid#dle sp"),
            ("bell\u{7}", r"CN=bell\07"),
            ("nul\0", r"CN=nul\00"),
            ("", "CN="),
            ("Grüße", "CN=Grüße"),
        ] {
            let dn = Dn { rdns: vec![vec![attr(COMMON_NAME, value)]] };
            assert_eq!(dn.to_string(), written, "{value:?}");
            assert_eq!(Dn::parse(written).unwrap(), dn, "{written}");
        }
        let dn = Dn::parse("CN=x+UID=1,1.2.3.4=#1e020061,O=o").unwrap();
        assert_eq!(dn.to_string(), "CN=x+UID=1,1.2.3.4=#1e020061,O=o");
        assert_eq!(Dn::parse(&dn.to_string()).unwrap(), dn);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// Whatever a certificate's subject holds (a hostile CA-signed CN included), its written
        /// form parses back to exactly it: no two subjects share a text.
        #[test]
        fn every_name_written_parses_back_to_itself(
            rdns in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just(COMMON_NAME.to_owned()),
                            Just("2.5.4.10".to_owned()),
                            "[0-2]\\.(0|[1-9][0-9]{0,3})(\\.(0|[1-9][0-9]{0,2})){0,3}",
                        ],
                        prop_oneof![
                            any::<String>(),
                            "[ #,+;<>\"\\\\=a-z\\x00-\\x1f]{0,12}",
                        ],
                    ),
                    1..4,
                ),
                1..5,
            ),
        ) {
            let rdns: Vec<Vec<Attribute>> = rdns
                .into_iter()
                .map(|rdn| rdn.into_iter().map(|(oid, v)| Attribute { oid, value: Value::Text(v) }).collect())
                .collect();
            let dn = Dn { rdns };
            let written = dn.to_string();
            prop_assert!(!written.chars().any(char::is_control), "{written:?}");
            let parsed = Dn::parse(&written);
            prop_assert!(parsed.as_ref().is_ok_and(|p| *p == dn), "{written:?}: {parsed:?}");
        }

        /// Any text: a name or a reason, never a panic; a name written again parses to itself.
        #[test]
        fn any_text_parses_or_is_refused(text in prop_oneof![any::<String>(), "[A-Za-z0-9=,+#\\\\ ;\"<>.]{0,24}"]) {
            if let Ok(dn) = Dn::parse(&text) {
                prop_assert_eq!(Dn::parse(&dn.to_string()).ok(), Some(dn));
            }
        }
    }

    #[test]
    fn common_names_bare_and_only() {
        let cn = |s: &str| Dn::parse(s).unwrap();
        assert_eq!(cn("cn=apiserver").bare_common_name(), Some(&text("apiserver")));
        assert_eq!(cn("CN=apiserver,O=x").bare_common_name(), None);
        assert_eq!(cn("CN=apiserver+O=x").bare_common_name(), None);
        assert_eq!(cn("O=x").bare_common_name(), None);
        assert_eq!(cn("CN=apiserver,O=x").only_common_name(), Some(&text("apiserver")));
        assert_eq!(cn("O=x+CN=apiserver").only_common_name(), Some(&text("apiserver")));
        assert_eq!(cn("CN=a,CN=b").only_common_name(), None, "two CNs: neither is the CN");
        assert_eq!(cn("O=x").only_common_name(), None);
    }
}
