//! The brokers an AMQP URL names: one host, or a cluster's seed hosts
//! separated by commas (`amqp://user:pass@h1:5672,h2:5672,h3/vhost?query`)
//! that share the credentials, vhost and query.

use lapin::uri::AMQPUri;

/// One broker to connect to. Its `Debug` shows the redacted URL only
/// (`AMQPUri`'s own shows the password).
#[derive(Clone)]
pub(crate) struct Seed {
    pub(crate) uri: AMQPUri,
    /// For messages: this broker's URL without its password.
    pub(crate) redacted: String,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seed({})", self.redacted)
    }
}

/// The seeds of `url`, in the order given; `Err` (without secrets) when a
/// host is empty or a seed's URL is not a valid AMQP URL.
pub(crate) fn parse(url: &str) -> Result<Vec<Seed>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "not an amqp:// or amqps:// URL".to_owned())?;
    if rest.contains("://") {
        // `amqp://u:p@h1,amqp://u:p@h2`: its second password would be
        // outside what redaction hides, so it is not echoed either.
        return Err(
            "list the seed hosts after one scheme and one set of credentials: \
                    amqp://user:pass@host1:port,host2:port/vhost"
                .to_owned(),
        );
    }
    // The credentials come once, before the first host, and end at the
    // last `@` (the redactor's rule too): a password may hold `/`, `?`,
    // `#`, `@` or a comma, percent-encoded or not; a host never holds an `@`.
    let (userinfo, after) = busline_core::redact::split_userinfo(rest);
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (hosts, tail) = after.split_at(authority_end);
    let userinfo = userinfo
        .map(|u| format!("{}@", encode_userinfo(u)))
        .unwrap_or_default();
    let mut seeds = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(format!("a seed host of `{hosts}` is empty"));
        }
        let one = format!("{scheme}://{userinfo}{host}{tail}");
        let redacted = busline_core::BrokerUrl::new(&one).redacted();
        // lapin's message names the part it could not read, never the URL.
        let uri: AMQPUri = one.parse().map_err(|e| format!("seed `{redacted}`: {e}"))?;
        seeds.push(Seed { uri, redacted });
    }
    Ok(seeds)
}

/// `userinfo` with the characters a URL parser would end it at (`/`, `?`,
/// `#`, `@`, `[`, `]`, blanks) percent-encoded, so lapin reads the same
/// user name and password the redactor hides; escapes already there stay.
fn encode_userinfo(userinfo: &str) -> String {
    let mut out = String::with_capacity(userinfo.len());
    for c in userinfo.chars() {
        match c {
            '/' | '?' | '#' | '@' | '[' | ']' | ' ' | '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|'
            | '}' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_is_one_seed() {
        let seeds = parse("amqp://guest:secret@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(seeds.len(), 1);
        assert_eq!(seeds[0].uri.authority.port, 5673);
        assert_eq!(seeds[0].uri.authority.userinfo.password, "secret");
        assert_eq!(seeds[0].redacted, "amqp://guest:***@127.0.0.1:5673/%2f");
    }

    #[test]
    fn a_host_list_shares_credentials_vhost_and_query() {
        let seeds = parse("amqp://u:p,w@h1:5681, h2:5682,h3/prod?heartbeat=7").unwrap();
        let got: Vec<_> = seeds
            .iter()
            .map(|s| {
                let a = &s.uri.authority;
                (
                    a.host.as_str(),
                    a.port,
                    a.userinfo.username.as_str(),
                    a.userinfo.password.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("h1", 5681, "u", "p,w"),
                ("h2", 5682, "u", "p,w"),
                ("h3", 5672, "u", "p,w")
            ]
        );
        for s in &seeds {
            assert_eq!(s.uri.vhost, "prod");
            assert_eq!(s.uri.query.heartbeat, Some(7));
            assert!(!s.redacted.contains("p,w"), "{}", s.redacted);
        }
        assert_eq!(seeds[1].redacted, "amqp://u:***@h2:5682/prod?heartbeat=7");
    }

    #[test]
    fn raw_special_characters_in_the_password_reach_lapin_and_never_show() {
        for pw in ["pa/ss", "p@ss#w?rd", "a:b/c@d", "p,w/x"] {
            let url = format!("amqp://orders:{pw}@h1:5681,[::1]:5682/prod?heartbeat=7");
            let seeds = parse(&url).expect(&url);
            assert_eq!(seeds.len(), 2, "{url}");
            for s in &seeds {
                assert_eq!(s.uri.authority.userinfo.username, "orders");
                assert_eq!(s.uri.authority.userinfo.password, pw, "{url}");
                assert_eq!(s.uri.vhost, "prod");
                assert!(!s.redacted.contains(pw), "{}", s.redacted);
            }
            assert_eq!(seeds[1].redacted, "amqp://orders:***@[::1]:5682/prod?heartbeat=7");
        }
        let seeds = parse("amqp://u:p%2Fq@h/%2f").unwrap();
        assert_eq!(seeds[0].uri.authority.userinfo.password, "p/q");
    }

    #[test]
    fn an_empty_or_bad_seed_is_an_error_without_the_password() {
        for url in [
            "amqp://u:hunter2@h1,,h3/%2f",
            "amqp://u:hunter2@h1,/%2f",
            "amqp://u:hunter2@h1,h2:notaport/%2f",
            "amqp://u:hunter2@h1,amqp://u:hunter2@h2/%2f",
        ] {
            let e = parse(url).expect_err(url);
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }
}
