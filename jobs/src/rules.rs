//! `fraud-detection`'s dynamic rules: the `rules` source's records ([`RuleChange`]), what they
//! parse into ([`Rule`]), the rule set every worker holds ([`RuleTable`], the broadcast state), and
//! the two functions that apply it: [`PaymentRules`] (the rules evaluated per payment) and
//! [`AlertGate`] (switches for the rules built on windows and joins).
//!
//! A rule change is one JSON line `{"rule_id":..,"kind":..,"parameters":{..},"ts_ms":..,"active":..}`
//! (or a CSV row with those columns). A change with a new `rule_id` adds a rule, one with a known
//! `rule_id` replaces it (kind and parameters), one with `"active":false` removes it. Each takes
//! effect at its `ts_ms`, for payments at or after it (a change at exactly a payment's time
//! applies to that payment). See the README, "Dynamic rules", for the kinds and their parameters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use paystream_engine::{csv_record, CsvField, GenOptions, Generate, Result};
use paystream_operators::{Context, KeyedBroadcastProcessFunction};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fraud::Alert;
use crate::payment::Payment;
use crate::text::ShortText;

/// The rules `fraud-detection` runs when no `rules` source is given: today's five rules, with the
/// parameters of the job's `--set` values (see [`RuleDefaults`]). The `gen:` source of
/// [`RuleChange`], the default of every source, reads this file.
pub const DEFAULT_RULES: &str = include_str!("fraud_rules.jsonl");

/// A rule's parameters: a JSON object, kept as its text.
///
/// In JSON lines it is written as the object itself; in CSV as the object's text in one quoted
/// column; in checkpoints and between processes as the text.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleParameters(String);

impl RuleParameters {
    /// The parameters in `text`, which must be a JSON object.
    pub fn parse(text: &str) -> std::result::Result<RuleParameters, String> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value @ serde_json::Value::Object(_)) => Ok(RuleParameters(value.to_string())),
            Ok(other) => Err(format!("rule parameters must be a JSON object, not {other}")),
            Err(e) => Err(format!("rule parameters {text:?}: {e}")),
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn object(&self) -> std::result::Result<serde_json::Map<String, serde_json::Value>, String> {
        serde_json::from_str(&self.0).map_err(|e| format!("rule parameters {:?}: {e}", self.0))
    }
}

impl Serialize for RuleParameters {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let value: serde_json::Value = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
            value.serialize(serializer)
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for RuleParameters {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            match serde_json::Value::deserialize(deserializer)? {
                value @ serde_json::Value::Object(_) => Ok(RuleParameters(value.to_string())),
                other => Err(serde::de::Error::custom(format!("rule parameters must be a JSON object, not {other}"))),
            }
        } else {
            String::deserialize(deserializer).map(RuleParameters)
        }
    }
}

impl CsvField for RuleParameters {
    fn parse_field(text: &str) -> std::result::Result<Self, String> {
        RuleParameters::parse(text)
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(&self.0)
    }
}

csv_record! {
    /// One change to the rule set, from the `rules` source.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct RuleChange {
        /// Names the rule; alerts carry it in their `rule` column.
        pub rule_id: String,
        /// What the rule checks: `velocity-count`, `velocity-amount`, `geo-velocity`,
        /// `card-testing`, `amount-limit`, `blocked-card`, `unauthorized` or `velocity-window`.
        pub kind: String,
        /// The kind's parameters, a JSON object.
        pub parameters: RuleParameters,
        /// When the change takes effect, ms since the Unix epoch.
        pub ts_ms: u64,
        /// `false` removes the rule.
        pub active: bool,
    }
}

impl Generate for RuleChange {
    /// `gen:` for rules is [`DEFAULT_RULES`]; it takes no options.
    fn generator(_options: &mut GenOptions) -> Result<paystream_engine::source::Generator<Self>> {
        let rules = Arc::new(default_rules()?);
        let record = rules.clone();
        Ok(paystream_engine::source::Generator {
            count: rules.len() as u64,
            partitions: 1,
            record: Arc::new(move |i| record[i as usize].clone()),
        })
    }
}

/// [`DEFAULT_RULES`], parsed.
pub fn default_rules() -> Result<Vec<RuleChange>> {
    DEFAULT_RULES
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| paystream_engine::Error::msg(format!("the default fraud rules, line {}: {e}", i + 1)))
        })
        .collect()
}

/// A rule, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// More than `max_count` payments on a card within `window_ms` (this one included).
    VelocityCount { window_ms: u64, max_count: u64 },
    /// More than `max_cents` paid with a card within `window_ms` (this payment included).
    VelocityAmount { window_ms: u64, max_cents: i64 },
    /// A payment from another country than a payment on the same card at most `window_ms` earlier.
    GeoVelocity { window_ms: u64 },
    /// A payment of at least `large_cents` after at least `small_count` payments under
    /// `small_cents` on the same card within `window_ms`; an alert uses those probes up.
    CardTesting { small_cents: i64, small_count: u64, large_cents: i64, window_ms: u64 },
    /// A payment above `max_cents` at a merchant of the category `merchant_min..=merchant_max`.
    AmountLimit { merchant_min: u64, merchant_max: u64, max_cents: i64 },
    /// Switches the blocked-card alerts of the temporal join on.
    BlockedCard,
    /// Switches the unauthorized alerts of the interval join on.
    Unauthorized,
    /// Switches the alerts of the sliding velocity window (job parameter `max_per_window`) on.
    VelocityWindow,
}

/// Parameters a rule may leave out, taken from the job's parameters of the same meaning.
#[derive(Clone, Debug)]
pub struct RuleDefaults {
    /// `geo_window_ms`.
    pub geo_window_ms: u64,
    /// `small_cents`.
    pub small_cents: i64,
    /// `small_count`.
    pub small_count: u64,
    /// `large_cents`.
    pub large_cents: i64,
    /// `testing_window_ms`.
    pub testing_window_ms: u64,
}

/// Reads a rule's parameters, refusing unknown or missing ones.
struct ParamReader {
    kind: String,
    object: serde_json::Map<String, serde_json::Value>,
}

impl ParamReader {
    fn take<T: serde::de::DeserializeOwned>(&mut self, name: &str, default: Option<T>) -> std::result::Result<T, String> {
        match self.object.remove(name) {
            Some(value) => serde_json::from_value(value).map_err(|e| format!("{} parameter {name}: {e}", self.kind)),
            None => default.ok_or_else(|| format!("{} needs the parameter {name}", self.kind)),
        }
    }
    fn finish(self) -> std::result::Result<(), String> {
        match self.object.keys().next() {
            Some(unknown) => Err(format!("{} has no parameter {unknown:?}", self.kind)),
            None => Ok(()),
        }
    }
}

impl Rule {
    /// The rule a change describes (`None`: the change removes its rule), or why it is invalid.
    pub fn from_change(change: &RuleChange, defaults: &RuleDefaults) -> std::result::Result<Option<Rule>, String> {
        let mut p = ParamReader { kind: change.kind.clone(), object: change.parameters.object()? };
        let rule = match change.kind.as_str() {
            "velocity-count" => Rule::VelocityCount { window_ms: p.take("window_ms", None)?, max_count: p.take("max_count", None)? },
            "velocity-amount" => Rule::VelocityAmount { window_ms: p.take("window_ms", None)?, max_cents: p.take("max_cents", None)? },
            "geo-velocity" => Rule::GeoVelocity { window_ms: p.take("window_ms", Some(defaults.geo_window_ms))? },
            "card-testing" => Rule::CardTesting {
                small_cents: p.take("small_cents", Some(defaults.small_cents))?,
                small_count: p.take("small_count", Some(defaults.small_count))?,
                large_cents: p.take("large_cents", Some(defaults.large_cents))?,
                window_ms: p.take("window_ms", Some(defaults.testing_window_ms))?,
            },
            "amount-limit" => Rule::AmountLimit {
                merchant_min: p.take("merchant_min", None)?,
                merchant_max: p.take("merchant_max", None)?,
                max_cents: p.take("max_cents", None)?,
            },
            "blocked-card" => Rule::BlockedCard,
            "unauthorized" => Rule::Unauthorized,
            "velocity-window" => Rule::VelocityWindow,
            other => {
                return Err(format!(
                    "rule {}: unknown kind {other:?}; the kinds are velocity-count, velocity-amount, geo-velocity, card-testing, \
                     amount-limit, blocked-card, unauthorized, velocity-window",
                    change.rule_id
                ))
            }
        };
        p.finish().map_err(|e| format!("rule {}: {e}", change.rule_id))?;
        Ok(change.active.then_some(rule))
    }

    /// How far back the rule looks at a card's payments, if it does.
    fn history_ms(&self) -> Option<u64> {
        match self {
            Rule::VelocityCount { window_ms, .. }
            | Rule::VelocityAmount { window_ms, .. }
            | Rule::GeoVelocity { window_ms }
            | Rule::CardTesting { window_ms, .. } => Some(*window_ms),
            _ => None,
        }
    }

    /// For the switch rules: the `rule` column of the alerts they switch, as the fixed steps write it.
    fn switches(&self) -> Option<&'static str> {
        match self {
            Rule::BlockedCard => Some("blocked-card"),
            Rule::Unauthorized => Some("unauthorized"),
            Rule::VelocityWindow => Some("velocity"),
            _ => None,
        }
    }
}

/// A change of the rule set as it travels to every worker: `rule: None` removes the rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleUpdate {
    /// The rule.
    pub rule_id: String,
    /// Its new version, or `None` to remove it.
    pub rule: Option<Rule>,
}

/// The rule set with its history: each rule's versions by the time they took effect, so that a
/// rule can be looked up as of any time, and the rules in force after the latest change. Rule
/// changes are few; versions are kept for the job's life.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RuleTable {
    versions: BTreeMap<String, Vec<(u64, Option<Rule>)>>,
    /// The rules in force after the latest change, by id, and how far back they look.
    latest: Vec<(String, Rule)>,
    latest_history_ms: Option<u64>,
}

impl RuleTable {
    /// Applies a change at `ts_ms` (changes come in event-time order).
    pub fn apply(&mut self, ts_ms: u64, update: RuleUpdate) {
        self.versions.entry(update.rule_id).or_default().push((ts_ms, update.rule));
        self.latest = self
            .versions
            .iter()
            .filter_map(|(id, versions)| versions.last().and_then(|(_, rule)| rule.clone()).map(|rule| (id.clone(), rule)))
            .collect();
        self.latest_history_ms = self.latest.iter().filter_map(|(_, rule)| rule.history_ms()).max();
    }

    /// The rules in force at `ts_ms`, by rule id.
    pub fn as_of(&self, ts_ms: u64) -> impl Iterator<Item = (&str, &Rule)> {
        self.versions.iter().filter_map(move |(id, versions)| {
            let (_, rule) = versions.iter().rev().find(|(t, _)| *t <= ts_ms)?;
            rule.as_ref().map(|rule| (id.as_str(), rule))
        })
    }

    /// The rules in force after the latest change, by rule id: those in force at the time of a
    /// record a broadcast step hands over on time (every change up to its time is applied, none
    /// after it yet), without a search through the versions.
    pub fn latest(&self) -> impl Iterator<Item = (&str, &Rule)> {
        self.latest.iter().map(|(id, rule)| (id.as_str(), rule))
    }
}

/// One earlier payment of a card, as the per-payment rules need it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Seen {
    seq: u64,
    ts_ms: u64,
    amount_cents: i64,
    country: ShortText,
}

/// A card's state for the per-payment rules: its payments within the longest window of the rules
/// in force (a rule added later sees the card's history only as far as the rules before it kept
/// it), numbered in event-time order, and for each card-testing rule the number of the payment
/// that last raised it (its probes are used up).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CardHistory {
    next_seq: u64,
    recent: VecDeque<Seen>,
    used_up: BTreeMap<String, u64>,
}

/// The per-payment rules (velocity count and amount, geo-velocity, card testing, amount limit),
/// keyed by card, with the rule set as broadcast state.
pub struct PaymentRules;

/// An alert of rule `rule_id` on payment `p`.
pub(crate) fn alert(rule_id: &str, p: &Payment, detail: String) -> Alert {
    Alert { rule: rule_id.to_string(), card_id: p.card_id, txn_id: p.txn_id.to_string(), ts_ms: p.ts_ms, detail }
}

impl KeyedBroadcastProcessFunction<u64, Payment, RuleUpdate> for PaymentRules {
    type State = CardHistory;
    type Broadcast = RuleTable;
    type Out = Alert;

    fn on_broadcast(&self, rules: &mut RuleTable, ts_ms: u64, update: RuleUpdate) {
        rules.apply(ts_ms, update);
    }

    fn on_record(&self, ctx: &mut Context<'_, Alert>, _card: &u64, card: &mut CardHistory, rules: &RuleTable, ts: u64, p: Payment) {
        // On time (late payments are dropped before this step), so the latest rules are those in
        // force at `ts`.
        let keep_ms = rules.latest_history_ms;
        let within = |seen: &Seen, window_ms: u64| seen.ts_ms.saturating_add(window_ms) >= ts;
        match keep_ms {
            Some(keep) => card.recent.retain(|seen| within(seen, keep)),
            None => card.recent.clear(),
        }
        let seq = card.next_seq;
        for (id, rule) in rules.latest() {
            match *rule {
                Rule::VelocityCount { window_ms, max_count } => {
                    let count = 1 + card.recent.iter().filter(|s| within(s, window_ms)).count() as u64;
                    if count > max_count {
                        ctx.emit(ts, alert(id, &p, format!("{count} payments within {window_ms} ms")));
                    }
                }
                Rule::VelocityAmount { window_ms, max_cents } => {
                    let sum = p.amount_cents + card.recent.iter().filter(|s| within(s, window_ms)).map(|s| s.amount_cents).sum::<i64>();
                    if sum > max_cents {
                        ctx.emit(ts, alert(id, &p, format!("{sum} cents within {window_ms} ms")));
                    }
                }
                Rule::GeoVelocity { window_ms } => {
                    if let Some(seen) = card.recent.iter().find(|s| within(s, window_ms) && s.country != p.country) {
                        let detail = format!("{} then {} within {} ms", seen.country, p.country, ts - seen.ts_ms);
                        ctx.emit(ts, alert(id, &p, detail));
                    }
                }
                Rule::CardTesting { small_cents, small_count, large_cents, window_ms } => {
                    if p.amount_cents >= small_cents && p.amount_cents >= large_cents {
                        let used_up = card.used_up.get(id).copied();
                        let probes = card
                            .recent
                            .iter()
                            .filter(|s| used_up.is_none_or(|u| s.seq > u) && within(s, window_ms) && s.amount_cents < small_cents)
                            .count() as u64;
                        if probes >= small_count {
                            let detail = format!("{probes} payments under {small_cents} cents, then {} cents", p.amount_cents);
                            ctx.emit(ts, alert(id, &p, detail));
                            card.used_up.insert(id.to_string(), seq);
                        }
                    }
                }
                Rule::AmountLimit { merchant_min, merchant_max, max_cents } => {
                    if (merchant_min..=merchant_max).contains(&p.merchant_id) && p.amount_cents > max_cents {
                        let detail = format!(
                            "{} cents at merchant {} (limit {max_cents} for merchants {merchant_min}..={merchant_max})",
                            p.amount_cents, p.merchant_id
                        );
                        ctx.emit(ts, alert(id, &p, detail));
                    }
                }
                Rule::BlockedCard | Rule::Unauthorized | Rule::VelocityWindow => {}
            }
        }
        match keep_ms {
            Some(keep) => {
                card.recent.push_back(Seen { seq, ts_ms: ts, amount_cents: p.amount_cents, country: p.country });
                card.next_seq += 1;
                ctx.register_timer(ts.saturating_add(keep).saturating_add(1));
            }
            None => ctx.clear_state(),
        }
    }

    fn on_timer(&self, ctx: &mut Context<'_, Alert>, _card: &u64, card: &mut CardHistory, rules: &RuleTable, timer: u64) {
        match rules.latest_history_ms {
            Some(keep) => card.recent.retain(|seen| seen.ts_ms.saturating_add(keep) >= timer),
            None => card.recent.clear(),
        }
        if card.recent.is_empty() {
            ctx.clear_state();
        }
    }
}

/// Passes the alerts of the fixed steps (velocity window, blocked card, unauthorized) while a
/// switch rule of their kind is in force at the alert's `ts_ms`, renamed to that rule's id (the
/// first by id if several are); drops them otherwise.
pub struct AlertGate;

impl KeyedBroadcastProcessFunction<u64, Alert, RuleUpdate> for AlertGate {
    type State = ();
    type Broadcast = RuleTable;
    type Out = Alert;

    fn on_broadcast(&self, rules: &mut RuleTable, ts_ms: u64, update: RuleUpdate) {
        rules.apply(ts_ms, update);
    }

    fn on_record(&self, ctx: &mut Context<'_, Alert>, _card: &u64, _state: &mut (), rules: &RuleTable, ts: u64, mut a: Alert) {
        // Alerts may come after their own time (an unauthorized payment is known only when its
        // window has passed): the rules are looked up as of the alert's time.
        if let Some((id, _)) = rules.as_of(a.ts_ms).find(|(_, rule)| rule.switches() == Some(a.rule.as_str())) {
            a.rule = id.to_string();
            ctx.emit(ts, a);
        }
        // Nothing is kept per card.
        ctx.clear_state();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> RuleDefaults {
        RuleDefaults { geo_window_ms: 600_000, small_cents: 200, small_count: 3, large_cents: 50_000, testing_window_ms: 600_000 }
    }

    #[test]
    fn the_default_rules_parse_into_todays_five() {
        let rules = default_rules().unwrap();
        let parsed: Vec<(String, Option<Rule>)> =
            rules.iter().map(|c| (c.rule_id.clone(), Rule::from_change(c, &defaults()).unwrap())).collect();
        assert_eq!(
            parsed,
            vec![
                ("velocity".to_string(), Some(Rule::VelocityWindow)),
                ("blocked-card".to_string(), Some(Rule::BlockedCard)),
                ("geo-velocity".to_string(), Some(Rule::GeoVelocity { window_ms: 600_000 })),
                (
                    "card-testing".to_string(),
                    Some(Rule::CardTesting { small_cents: 200, small_count: 3, large_cents: 50_000, window_ms: 600_000 })
                ),
                ("unauthorized".to_string(), Some(Rule::Unauthorized)),
            ]
        );
        assert!(rules.iter().all(|c| c.ts_ms == 0 && c.active));
    }

    #[test]
    fn rule_changes_read_from_json_csv_and_checkpoints() {
        use paystream_engine::CsvRecord;
        let line = r#"{"rule_id":"big","kind":"amount-limit","parameters":{"merchant_min":1,"merchant_max":9,"max_cents":500},"ts_ms":7,"active":true}"#;
        let change: RuleChange = serde_json::from_str(line).unwrap();
        assert_eq!(change.parameters.as_str(), r#"{"max_cents":500,"merchant_max":9,"merchant_min":1}"#);
        assert_eq!(serde_json::to_string(&change).unwrap().len(), line.len());
        let bytes = paystream_engine::checkpoint::encode(&change).unwrap();
        assert_eq!(paystream_engine::checkpoint::decode::<RuleChange>(&bytes).unwrap(), change);
        let csv = RuleChange::from_csv_line(r#"big,amount-limit,"{""merchant_min"":1,""merchant_max"":9,""max_cents"":500}",7,true"#);
        assert_eq!(csv, Ok(change.clone()));
        let rule = Rule::from_change(&change, &defaults()).unwrap();
        assert_eq!(rule, Some(Rule::AmountLimit { merchant_min: 1, merchant_max: 9, max_cents: 500 }));

        let bad = |kind: &str, params: &str| {
            let c = RuleChange { kind: kind.into(), parameters: RuleParameters::parse(params).unwrap(), ..change.clone() };
            Rule::from_change(&c, &defaults()).unwrap_err()
        };
        assert!(bad("amount-limit", r#"{"merchant_min":1,"max_cents":5}"#).contains("needs the parameter merchant_max"));
        assert!(bad("geo-velocity", r#"{"window":5}"#).contains("no parameter \"window\""));
        assert!(bad("velocity-count", r#"{"window_ms":-5,"max_count":1}"#).contains("window_ms"));
        assert!(bad("teleport", "{}").contains("unknown kind"));
        assert!(serde_json::from_str::<RuleChange>(&line.replace(r#"{"merchant_min":1,"merchant_max":9,"max_cents":500}"#, "5")).is_err());
    }

    #[test]
    fn the_table_answers_as_of_any_time() {
        let mut table = RuleTable::default();
        let update = |rule: Option<Rule>| RuleUpdate { rule_id: "r".into(), rule };
        table.apply(10, update(Some(Rule::GeoVelocity { window_ms: 5 })));
        table.apply(20, update(Some(Rule::GeoVelocity { window_ms: 7 })));
        table.apply(30, update(None));
        let at = |t: u64| table.as_of(t).map(|(_, r)| r.clone()).collect::<Vec<_>>();
        assert_eq!(at(9), vec![]);
        assert_eq!(at(10), vec![Rule::GeoVelocity { window_ms: 5 }]);
        assert_eq!(at(29), vec![Rule::GeoVelocity { window_ms: 7 }]);
        assert_eq!(at(30), vec![]);
        assert_eq!(table.latest().count(), 0);
        table.apply(40, RuleUpdate { rule_id: "q".into(), rule: Some(Rule::VelocityCount { window_ms: 9, max_count: 1 }) });
        assert_eq!(table.latest().map(|(id, _)| id).collect::<Vec<_>>(), vec!["q"]);
        assert_eq!(table.latest_history_ms, Some(9));
    }
}
