//! What changed between two policies, one human line per key
//! (`channels.messenger.rate.per_second: 300 → 50`), for `ApplyPolicy`'s answer and the
//! policy history.
//!
//! Both policies are flattened into `key → value` with effective values (every channel has
//! `enabled` and `categories`, the defaults where the document says nothing; a missing
//! `categories` lists every category), so rewriting a document without changing its meaning gives no line. Lines come
//! in key order, which is stable. Budgets and frequency caps are keyed by what identifies them
//! (`budgets[campaign:spring-sale]`, `frequency_caps[marketing/24h]`) rather than by their
//! position, so removing one does not shift every later entry into a change.

use std::collections::BTreeMap;

use super::document::{ChannelPolicy, Micros, Policy, PriceTable};
use crate::model::{Category, Channel};

const UNSET: &str = "(unset)";

/// One line per changed key, `key: old → new` (`(unset)` for a side that lacks the key),
/// in key order; empty when the policies mean the same. The version is not compared.
pub fn diff(old: &Policy, new: &Policy) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            (x != y).then(|| {
                format!(
                    "{k}: {} → {}",
                    x.map_or(UNSET, String::as_str),
                    y.map_or(UNSET, String::as_str)
                )
            })
        })
        .collect()
}

/// An amount in micros written back as the decimal the document would hold (7900 → 0.0079).
fn money(m: Micros) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let m = m.unsigned_abs();
    let (units, frac) = (m / 1_000_000, m % 1_000_000);
    if frac == 0 {
        format!("{sign}{units}")
    } else {
        let f = format!("{frac:06}");
        format!("{sign}{units}.{}", f.trim_end_matches('0'))
    }
}

fn list<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn flatten(p: &Policy) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("routing.strategy".into(), p.routing.strategy.name().into());
    m.insert(
        "routing.default_route".into(),
        list(p.routing.default_route.iter().map(|c| c.name())),
    );
    for c in Channel::ALL {
        flatten_channel(&mut m, *c, p.channel(*c));
    }
    for b in &p.budgets {
        let k = format!("budgets[{}:{}]", b.scope.name(), b.id);
        m.insert(format!("{k}.daily"), money(b.daily_micros));
        m.insert(format!("{k}.currency"), b.currency.clone());
    }
    if let Some(q) = &p.quiet_hours {
        m.insert(
            "quiet_hours.categories".into(),
            list(q.categories.iter().map(|c| c.name())),
        );
        m.insert("quiet_hours.start".into(), q.start.to_string());
        m.insert("quiet_hours.end".into(), q.end.to_string());
    }
    for c in &p.frequency_caps {
        m.insert(
            format!("frequency_caps[{}/{}].max", c.category, duration(c.per)),
            c.max.to_string(),
        );
    }
    m
}

fn flatten_channel(m: &mut BTreeMap<String, String>, c: Channel, rules: &ChannelPolicy) {
    // `enabled` and `categories` always have a value, so disabling a channel the document
    // did not mention reads `true → false`, not `(unset) → false`.
    let k = format!("channels.{c}");
    m.insert(format!("{k}.enabled"), rules.enabled.to_string());
    let categories: Vec<&str> = Category::ALL
        .iter()
        .filter(|x| rules.carries(**x))
        .map(|x| x.name())
        .collect();
    m.insert(format!("{k}.categories"), list(categories));
    if let Some(r) = &rules.rate {
        m.insert(format!("{k}.rate.per_second"), r.per_second.to_string());
        if let Some(b) = r.burst {
            m.insert(format!("{k}.rate.burst"), b.to_string());
        }
        m.insert(format!("{k}.rate.scope"), r.scope.name().into());
    }
    if let Some(w) = &rules.window {
        m.insert(format!("{k}.window.hours"), w.hours.to_string());
        m.insert(format!("{k}.window.outside_tags"), list(&w.outside_tags));
        m.insert(
            format!("{k}.window.outside_templates"),
            w.outside_templates.to_string(),
        );
    }
    if let Some(p) = &rules.price {
        m.insert(format!("{k}.price.currency"), p.currency.clone());
        for (name, t) in [
            ("per_message", &p.per_message),
            ("per_segment", &p.per_segment),
            ("outside_window", &p.outside_window),
        ] {
            flatten_table(m, &format!("{k}.price.{name}"), t);
        }
    }
    if let Some(r) = &rules.retry {
        if let Some(n) = r.max_attempts {
            m.insert(format!("{k}.retry.max_attempts"), n.to_string());
        }
        for (name, d) in [("max_age", r.max_age), ("base", r.base), ("cap", r.cap)] {
            if let Some(d) = d {
                m.insert(format!("{k}.retry.{name}"), duration(d));
            }
        }
    }
}

fn flatten_table(m: &mut BTreeMap<String, String>, key: &str, t: &PriceTable) {
    for (c, v) in &t.categories {
        m.insert(format!("{key}.{c}"), money(*v));
    }
    if let Some(v) = t.default {
        m.insert(format!("{key}.default"), money(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::document::tests::DESIGN_EXAMPLE;

    fn parse(text: &str) -> Policy {
        Policy::parse(text).expect("valid")
    }

    #[test]
    fn equal_policies_have_no_diff() {
        let p = parse(DESIGN_EXAMPLE);
        assert!(diff(&p, &p).is_empty());
        let mut q = p.clone();
        q.version = 7;
        assert!(diff(&p, &q).is_empty(), "the version is not a change");
        assert!(diff(&Policy::default(), &parse("")).is_empty());
    }

    #[test]
    fn restating_defaults_is_no_change() {
        let a = parse("");
        let b = parse(
            "[channels.email]\nenabled = true\n[channels.sms]\ncategories = [\"transactional\", \"utility\", \"marketing\", \"authentication\"]\n",
        );
        assert!(diff(&a, &b).is_empty(), "{:?}", diff(&a, &b));
    }

    #[test]
    fn one_line_per_changed_key() {
        let old = parse(DESIGN_EXAMPLE);
        let text = DESIGN_EXAMPLE
            .replace("per_second = 300", "per_second = 50")
            .replace("marketing = 0.025", "marketing = 0.0316")
            .replace("daily = 500.0", "daily = 250")
            .replace("start = \"21:00\"", "start = \"20:30\"")
            .replace(
                "[channels.whatsapp]\n",
                "[channels.whatsapp]\nenabled = false\n",
            );
        let new = parse(&text);
        assert_eq!(
            diff(&old, &new),
            vec![
                "budgets[campaign:spring-sale].daily: 500 → 250",
                "channels.messenger.rate.per_second: 300 → 50",
                "channels.whatsapp.enabled: true → false",
                "channels.whatsapp.price.per_message.marketing: 0.025 → 0.0316",
                "quiet_hours.start: 21:00 → 20:30",
            ]
        );
    }

    #[test]
    fn added_and_removed_keys_show_unset() {
        let old = parse(
            "[channels.sms]\nprice = { currency = \"USD\", per_segment = { default = 0.0079 } }\n",
        );
        let new = parse(
            "[routing]\nstrategy = \"cheapest_eligible\"\ndefault_route = [\"sms\", \"email\"]\n\
             [channels.sms]\nprice = { currency = \"USD\", per_message = { marketing = 0.01 } }\n\
             [[frequency_caps]]\ncategory = \"marketing\"\nmax = 2\nper = \"7d\"\n",
        );
        assert_eq!(
            diff(&old, &new),
            vec![
                "channels.sms.price.per_message.marketing: (unset) → 0.01",
                "channels.sms.price.per_segment.default: 0.0079 → (unset)",
                "frequency_caps[marketing/7days].max: (unset) → 2",
                "routing.default_route: [] → [sms, email]",
                "routing.strategy: preference → cheapest_eligible",
            ]
        );
        // And back: the same keys, the other way round.
        let back = diff(&new, &old);
        assert_eq!(back.len(), 5);
        assert_eq!(
            back[0],
            "channels.sms.price.per_message.marketing: 0.01 → (unset)"
        );
    }

    #[test]
    fn a_new_channel_section_lists_what_it_sets() {
        let old = parse("");
        let new = parse("[channels.email]\nenabled = false\ncategories = [\"utility\"]\n");
        assert_eq!(
            diff(&old, &new),
            vec![
                "channels.email.categories: [transactional, utility, marketing, authentication] \
                 → [utility]",
                "channels.email.enabled: true → false",
            ]
        );
    }

    #[test]
    fn money_is_written_as_the_document_would() {
        assert_eq!(money(0), "0");
        assert_eq!(money(7_900), "0.0079");
        assert_eq!(money(25_000), "0.025");
        assert_eq!(money(500_000_000), "500");
        assert_eq!(money(1_500_001), "1.500001");
        assert_eq!(money(-2_500_000), "-2.5");
    }
}
