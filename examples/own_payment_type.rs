//! Your own event type: payments as a processor exports them, with a merchant category code
//! (MCC), a device id, the IP's country and the card's BIN, and their time as RFC 3339 text,
//! declared with `csv_record!` and read from a CSV or JSON lines file: no generator to write.
//! A keyed process function flags account takeover: a card, used in the last 30 minutes, that
//! pays from an IP country and in a merchant category it has used in none of them.
//!
//! ```text
//! cargo run --example own_payment_type -- run account-takeover \
//!     --source payments=file:examples/own_payments.csv --sink alerts=stdout:
//! ```
use std::collections::BTreeSet;

use paystream::operators::{Context, ProcessExt, ProcessFunction};
use paystream::prelude::*;

paystream::csv_record! {
    /// A card payment, columns `time,txn_id,card_id,amount_cents,mcc,device_id,ip_country,bin`.
    #[derive(Clone, Debug)]
    pub struct CardPayment {
        pub time: Rfc3339Millis, // `2026-01-01T09:00:00.250+01:00`: any offset, read as UTC ms
        pub txn_id: ShortText,
        pub card_id: u64,
        pub amount_cents: i64,
        pub mcc: u16,
        pub device_id: ShortText,
        pub ip_country: ShortText,
        pub bin: u32,
    }
}

paystream::csv_record! {
    /// A payment from a new country in a new category, with what the card did before it.
    #[derive(Clone, Debug)]
    pub struct TakeoverAlert {
        pub time: Rfc3339Millis,
        pub card_id: u64,
        pub txn_id: ShortText,
        pub bin: u32,
        pub amount_cents: i64,
        pub mcc: u16,
        pub ip_country: ShortText,
        pub new_device: bool,
        pub recent_mccs: String,
        pub recent_countries: String,
    }
}

struct AccountTakeover {
    window_ms: u64,
}

impl ProcessFunction<u64, CardPayment> for AccountTakeover {
    type State = Vec<CardPayment>; // the card's payments in the last `window_ms`, oldest first
    type Out = TakeoverAlert;

    fn on_record(&self, ctx: &mut Context<'_, TakeoverAlert>, card: &u64, recent: &mut Vec<CardPayment>, ts: u64, p: CardPayment) {
        recent.retain(|seen| seen.time.millis() + self.window_ms >= ts);
        let new_country = recent.iter().all(|seen| seen.ip_country != p.ip_country);
        let new_mcc = recent.iter().all(|seen| seen.mcc != p.mcc);
        if !recent.is_empty() && new_country && new_mcc {
            let mccs: BTreeSet<String> = recent.iter().map(|seen| seen.mcc.to_string()).collect();
            let countries: BTreeSet<&str> = recent.iter().map(|seen| seen.ip_country.as_str()).collect();
            let alert = TakeoverAlert {
                time: p.time,
                card_id: *card,
                txn_id: p.txn_id.clone(),
                bin: p.bin,
                amount_cents: p.amount_cents,
                mcc: p.mcc,
                ip_country: p.ip_country.clone(),
                new_device: recent.iter().all(|seen| seen.device_id != p.device_id),
                recent_mccs: Vec::from_iter(mccs).join(" "),
                recent_countries: Vec::from_iter(countries).join(" "),
            };
            ctx.emit(ts, alert);
        }
        recent.push(p);
    }
}

const ACCOUNT_TAKEOVER: JobSpec = JobSpec {
    name: "account-takeover",
    about: "Cards that pay from a new IP country in a new merchant category within minutes of their last payments.",
    sources: &[SourceSpec { name: "payments", record: "CardPayment", about: "payments with their MCC, device, IP country and BIN" }],
    sinks: &[SinkSpec {
        name: "alerts",
        about: "time,card_id,txn_id,bin,amount_cents,mcc,ip_country,new_device,recent_mccs,recent_countries",
    }],
    params: &[ParamSpec { name: "window_minutes", default: "30", about: "how far back a card's countries and categories count" }],
    build: account_takeover,
};

fn account_takeover(job: &mut JobBuilder, params: &Params) -> Result<()> {
    let window_minutes: u64 = params.get("window_minutes")?;
    job.source::<CardPayment>("payments")?
        .assign_timestamps(|p| p.time.millis(), OutOfOrder::millis(5_000))?
        .key_by("by-card", |p| p.card_id)
        // A card quiet for the whole window has nothing left to compare with: its state goes.
        .process_with_ttl("account-takeover", AccountTakeover { window_ms: minutes(window_minutes).as_millis() }, minutes(window_minutes))
        .sink("alerts")
}

fn main() -> std::process::ExitCode {
    let mut jobs = paystream::jobs::all_jobs();
    jobs.push(ACCOUNT_TAKEOVER);
    paystream::cli::main(jobs)
}
