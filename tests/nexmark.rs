//! End-to-end tests of the Nexmark generator and queries: each runs the real binary (in a fresh
//! temporary directory, at 1 and 2 workers), reads back the events the generator made (written
//! by `nexmark-generate`) and compares each query's output with a batch computation done here,
//! independently of the program, as multisets.

#[macro_use]
mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const PERSON_HEADER: &str = "id,name,email_address,credit_card,city,state,ts_ms";
const AUCTION_HEADER: &str = "id,item_name,description,initial_bid_cents,reserve_cents,ts_ms,expires_ms,seller,category";
const BID_HEADER: &str = "auction,bidder,price_cents,channel,ts_ms";

/// A bid as the tests read and write it (kept apart from the program's own type).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Bid {
    auction: u64,
    bidder: u64,
    price_cents: u64,
    channel: String,
    ts_ms: u64,
}

impl Bid {
    fn parse(line: &str) -> Bid {
        let f = split_csv(line);
        assert_eq!(f.len(), 5, "bid line {line:?}");
        let n = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
        Bid { auction: n(0), bidder: n(1), price_cents: n(2), channel: f[3].clone(), ts_ms: n(4) }
    }

    fn to_line(&self) -> String {
        format!("{},{},{},{},{}", self.auction, self.bidder, self.price_cents, self.channel, self.ts_ms)
    }
}

/// The three generated streams, as data lines.
struct Events {
    persons: Vec<String>,
    auctions: Vec<String>,
    bids: Vec<String>,
}

/// The `--source NAME=gen:OPTIONS` arguments of a Nexmark job reading sources `names`, all with
/// the same options (so that together they make one consistent stream).
fn gen_sources(names: &[&str], options: &str) -> Vec<String> {
    let mut a = Vec::new();
    for name in names {
        a.extend(args!["--source", format!("{name}=gen:{options}")]);
    }
    a
}

/// Runs `nexmark-generate` on `gen:OPTIONS` with `workers` workers into `DIR/LABEL/` (files with
/// extension `ext`) and returns what it wrote, each stream sorted when `ext` is csv.
fn generate(dir: &TempDir, label: &str, options: &str, workers: usize, ext: &str) -> Events {
    let out = dir.join(label);
    let mut a = args!["run", "nexmark-generate"];
    a.extend(gen_sources(&["persons", "auctions", "bids"], options));
    for name in ["persons", "auctions", "bids"] {
        a.extend(args!["--sink", format!("{name}={}", file_uri(&out.join(format!("{name}.{ext}"))))]);
    }
    a.extend(args!["--workers", workers, "-q"]);
    run(&format!("{label}: nexmark-generate on {workers} workers"), a, dir.path()).assert_success();
    if ext != "csv" {
        return Events { persons: Vec::new(), auctions: Vec::new(), bids: Vec::new() };
    }
    let sorted = |name: &str, header: &str| {
        let mut lines = data_lines(&out.join(format!("{name}.csv")), header);
        lines.sort();
        lines
    };
    Events { persons: sorted("persons", PERSON_HEADER), auctions: sorted("auctions", AUCTION_HEADER), bids: sorted("bids", BID_HEADER) }
}

fn column(line: &str, i: usize) -> u64 {
    split_csv(line)[i].parse().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"))
}

#[test]
fn generator_follows_the_mix_keeps_ids_consistent_and_is_deterministic() {
    let dir = TempDir::new("nexmark-gen");
    let options = "count=5000,seed=11,disorder_ms=200";
    let one = generate(&dir, "w1", options, 1, "csv");
    let two = generate(&dir, "w2", options, 2, "csv");
    assert_same("persons, 2 workers against 1", &one.persons, &two.persons);
    assert_same("auctions, 2 workers against 1", &one.auctions, &two.auctions);
    assert_same("bids, 2 workers against 1", &one.bids, &two.bids);

    // 5000 events: 100 blocks of 1 person, 3 auctions and 46 bids.
    assert_eq!((one.persons.len(), one.auctions.len(), one.bids.len()), (100, 300, 4600));

    // Ids from 1000 up; every reference points at something created no later.
    let persons: BTreeMap<u64, u64> = one.persons.iter().map(|l| (column(l, 0), column(l, 6))).collect();
    assert_eq!(persons.keys().copied().collect::<Vec<_>>(), (1000..1100).collect::<Vec<_>>());
    let mut auctions = BTreeMap::new();
    for line in &one.auctions {
        let (id, ts_ms, seller, category) = (column(line, 0), column(line, 5), column(line, 7), column(line, 8));
        // Disorder moves each event back by up to 200 ms, so "no later" holds within that.
        let seller_ts = *persons.get(&seller).unwrap_or_else(|| panic!("auction {line:?}: unknown seller"));
        assert!(seller_ts <= ts_ms + 200, "auction {line:?} before its seller");
        assert!((10..15).contains(&category), "{line:?}");
        assert!(column(line, 4) > column(line, 3), "reserve above the initial bid: {line:?}");
        auctions.insert(id, ts_ms);
    }
    assert_eq!(auctions.keys().copied().collect::<Vec<_>>(), (1000..1300).collect::<Vec<_>>());
    let mut bid_auctions = BTreeSet::new();
    for bid in one.bids.iter().map(|l| Bid::parse(l)) {
        let auction_ts = *auctions.get(&bid.auction).unwrap_or_else(|| panic!("{bid:?}: unknown auction"));
        assert!(auction_ts <= bid.ts_ms + 200, "{bid:?} before its auction");
        let bidder_ts = *persons.get(&bid.bidder).unwrap_or_else(|| panic!("{bid:?}: unknown bidder"));
        assert!(bidder_ts <= bid.ts_ms + 200, "{bid:?} before its bidder");
        assert!((100..=100_000_000).contains(&bid.price_cents), "{bid:?}");
        bid_auctions.insert(bid.auction);
    }
    assert!(bid_auctions.len() > 100, "bids spread over {} auctions", bid_auctions.len());

    // Event time advances at 10,000 events per second: 5000 events span half a second, give or
    // take the disorder of 200 ms.
    let times: Vec<u64> = one.bids.iter().map(|l| Bid::parse(l).ts_ms).collect();
    let span = times.iter().max().unwrap() - times.iter().min().unwrap();
    assert!((300..=700).contains(&span), "bids span {span} ms");

    // Another seed, other events.
    let other = generate(&dir, "seed7", "count=5000,seed=7,disorder_ms=200", 1, "csv");
    assert_ne!(one.bids, other.bids);
}

#[test]
fn queries_0_1_2_equal_a_batch_computation() {
    let dir = TempDir::new("nexmark-queries");
    let options = "count=30000,seed=3,disorder_ms=500,partitions=4";
    let events = generate(&dir, "input", options, 1, "csv");
    let bids: Vec<Bid> = events.bids.iter().map(|l| Bid::parse(l)).collect();
    assert_eq!(bids.len(), 30000 / 50 * 46);
    let source = args!["--source", format!("bids=gen:{options}")];

    // q0: every bid, unchanged.
    let q0 = run_on_1_and_2_workers(&dir, "q0", "nexmark-q0", &source, "bids", BID_HEADER);
    assert_same("q0", &events.bids, &q0);

    // q1: prices times 0.908, in cents, rounded half up (computed here in exact decimal: the
    // price in cents times 908 is a number of thousandths of a cent).
    let mut expected: Vec<String> = bids
        .iter()
        .map(|b| {
            let thousandths = b.price_cents as u128 * 908;
            let euro_cents = thousandths / 1000 + u128::from(thousandths % 1000 >= 500);
            Bid { price_cents: euro_cents as u64, ..b.clone() }.to_line()
        })
        .collect();
    expected.sort();
    let q1 = run_on_1_and_2_workers(&dir, "q1", "nexmark-q1", &source, "bids", BID_HEADER);
    assert_same("q1", &expected, &q1);

    // q2: auction and price of bids on auctions whose id is a multiple of 123.
    let mut expected: Vec<String> =
        bids.iter().filter(|b| b.auction % 123 == 0).map(|b| format!("{},{}", b.auction, b.price_cents)).collect();
    expected.sort();
    assert!(expected.len() > 20, "q2 selects only {} bids: too few to test", expected.len());
    let q2 = run_on_1_and_2_workers(&dir, "q2", "nexmark-q2", &source, "selected", "auction,price_cents");
    assert_same("q2", &expected, &q2);
}

#[test]
fn queries_replay_generated_files_as_csv_and_json_lines() {
    let dir = TempDir::new("nexmark-replay");
    let options = "count=5000,seed=5";
    let events = generate(&dir, "csv", options, 1, "csv");
    generate(&dir, "jsonl", options, 1, "jsonl");
    for file in [dir.join("csv").join("bids.csv"), dir.join("jsonl").join("bids.jsonl")] {
        let label = format!("q0 from {}", file.file_name().and_then(|n| n.to_str()).unwrap_or("?"));
        let source = args!["--source", format!("bids={}", file_uri(&file))];
        let q0 = run_on_1_and_2_workers(&dir, &label, "nexmark-q0", &source, "bids", BID_HEADER);
        assert_same(&label, &events.bids, &q0);
    }
    assert!(Path::new(&dir.join("jsonl").join("persons.jsonl")).exists());
}

#[test]
fn queries_5_and_7_equal_a_batch_computation() {
    let dir = TempDir::new("nexmark-windows");
    // 60,000 events at 2,000 a second: 30 s of event time, a few 10 s windows.
    let options = "count=60000,seed=9,disorder_ms=500,events_per_sec=2000,partitions=4";
    let events = generate(&dir, "input", options, 1, "csv");
    let bids: Vec<Bid> = events.bids.iter().map(|l| Bid::parse(l)).collect();
    let source = args!["--source", format!("bids=gen:{options}")];

    // q5: windows of 10 s every 2 s; in each, the auctions with the most bids.
    let (size, slide) = (10_000u64, 2_000u64);
    let mut counts: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for b in &bids {
        let mut start = b.ts_ms - b.ts_ms % slide;
        loop {
            *counts.entry(start).or_default().entry(b.auction).or_default() += 1;
            if start + size <= b.ts_ms + slide {
                break;
            }
            start -= slide;
        }
    }
    let mut expected = Vec::new();
    for (start, per_auction) in &counts {
        let most = per_auction.values().max().copied().unwrap_or(0);
        for (auction, n) in per_auction {
            if *n == most {
                expected.push(format!("{start},{},{auction},{n}", start + size));
            }
        }
    }
    expected.sort();
    assert!(counts.len() >= 15, "only {} windows", counts.len());
    let q5 = run_on_1_and_2_workers(&dir, "q5", "nexmark-q5", &source, "hot_items", "window_start_ms,window_end_ms,auction,bids");
    assert_same("q5", &expected, &q5);

    // q7: tumbling windows of 10 s; in each, the bids with the highest price.
    let mut highest: BTreeMap<u64, (u64, Vec<&Bid>)> = BTreeMap::new();
    for b in &bids {
        let start = b.ts_ms - b.ts_ms % size;
        let entry = highest.entry(start).or_insert((0, Vec::new()));
        if b.price_cents > entry.0 {
            *entry = (b.price_cents, vec![b]);
        } else if b.price_cents == entry.0 {
            entry.1.push(b);
        }
    }
    let mut expected: Vec<String> = highest
        .iter()
        .flat_map(|(start, (_, top))| {
            top.iter().map(move |b| format!("{start},{},{},{},{},{}", start + size, b.auction, b.bidder, b.price_cents, b.ts_ms))
        })
        .collect();
    expected.sort();
    assert!(highest.len() >= 3, "only {} windows", highest.len());
    let q7 = run_on_1_and_2_workers(
        &dir,
        "q7",
        "nexmark-q7",
        &source,
        "highest_bids",
        "window_start_ms,window_end_ms,auction,bidder,price_cents,ts_ms",
    );
    assert_same("q7", &expected, &q7);
}

/// A person as the tests read it.
#[derive(Clone, Debug)]
struct Person {
    id: u64,
    name: String,
    city: String,
    state: String,
    ts_ms: u64,
}

impl Person {
    fn parse(line: &str) -> Person {
        let f = split_csv(line);
        assert_eq!(f.len(), 7, "person line {line:?}");
        let n = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
        Person { id: n(0), name: f[1].clone(), city: f[4].clone(), state: f[5].clone(), ts_ms: n(6) }
    }
}

/// An auction as the tests read it (the columns the queries use).
#[derive(Clone, Debug)]
struct Auction {
    id: u64,
    ts_ms: u64,
    expires_ms: u64,
    seller: u64,
    category: u64,
}

impl Auction {
    fn parse(line: &str) -> Auction {
        let f = split_csv(line);
        assert_eq!(f.len(), 9, "auction line {line:?}");
        let n = |i: usize| f[i].parse::<u64>().unwrap_or_else(|e| panic!("column {i} of {line:?}: {e}"));
        Auction { id: n(0), ts_ms: n(5), expires_ms: n(6), seller: n(7), category: n(8) }
    }
}

#[test]
fn query_3_equals_a_batch_computation() {
    let dir = TempDir::new("nexmark-q3");
    // 30,000 events at 1,000 a second: 30 s of event time, so that many auctions come long
    // (more than any window) after their seller registered.
    let options = "count=30000,seed=13,disorder_ms=500,events_per_sec=1000,partitions=4";
    let events = generate(&dir, "input", options, 1, "csv");
    let persons: BTreeMap<u64, Person> = events.persons.iter().map(|l| Person::parse(l)).map(|p| (p.id, p)).collect();
    let mut expected = Vec::new();
    let mut longest_wait_ms = 0;
    for auction in events.auctions.iter().map(|l| Auction::parse(l)) {
        let seller = &persons[&auction.seller];
        if auction.category == 10 && ["OR", "ID", "CA"].contains(&seller.state.as_str()) {
            expected.push(format!("{},{},{},{}", seller.name, seller.city, seller.state, auction.id));
            longest_wait_ms = longest_wait_ms.max(auction.ts_ms.saturating_sub(seller.ts_ms));
        }
    }
    expected.sort();
    assert!(expected.len() >= 50, "q3 matches only {} auctions: too few to test", expected.len());
    assert!(longest_wait_ms > 10_000, "no auction comes long after its seller ({longest_wait_ms} ms): a window join would pass");

    let sources = gen_sources(&["persons", "auctions"], options);
    let q3 = run_on_1_and_2_workers(&dir, "q3", "nexmark-q3", &sources, "suggestions", "name,city,state,auction");
    assert_same("q3", &expected, &q3);
}

#[test]
fn query_4_changelog_ends_at_a_batch_computation() {
    let dir = TempDir::new("nexmark-q4");
    // Short auctions (0.5 to 1.5 s) at 2,000 events a second: bids on one of the latest 100
    // auctions often come after it expired, so the lifetime condition matters.
    let options = "count=20000,seed=17,disorder_ms=300,events_per_sec=2000,auction_length_ms=1000,partitions=4";
    let events = generate(&dir, "input", options, 1, "csv");
    let auctions: BTreeMap<u64, Auction> = events.auctions.iter().map(|l| Auction::parse(l)).map(|a| (a.id, a)).collect();
    let mut winning: BTreeMap<u64, u64> = BTreeMap::new();
    let mut outside = 0;
    for bid in events.bids.iter().map(|l| Bid::parse(l)) {
        let auction = &auctions[&bid.auction];
        if (auction.ts_ms..=auction.expires_ms).contains(&bid.ts_ms) {
            let highest = winning.entry(auction.id).or_default();
            *highest = (*highest).max(bid.price_cents);
        } else {
            outside += 1;
        }
    }
    assert!(outside > 100, "only {outside} bids outside their auction's lifetime: the condition goes untested");
    let mut per_category: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (auction, price) in &winning {
        let entry = per_category.entry(auctions[auction].category).or_default();
        entry.0 += 1;
        entry.1 += price;
    }
    let mut expected: Vec<String> = per_category.iter().map(|(c, (n, total))| format!("{c},{n},{}", total / n)).collect();
    expected.sort();
    assert_eq!(expected.len(), 5, "{expected:?}");

    let sources = gen_sources(&["auctions", "bids"], options);
    let header = "category,auctions,average_price_cents,diff";
    for (workers, lines) in [1, 2].into_iter().zip(run_at_1_and_2_workers(&dir, "q4", "nexmark-q4", &sources, "averages", header)) {
        // Applied in the order written, the changelog keeps one current row per category: each
        // retraction removes the current row, each insertion comes when there is none.
        let mut current: BTreeMap<String, String> = BTreeMap::new();
        let mut retractions = 0;
        for line in &lines {
            let (row, diff) = line.rsplit_once(',').unwrap_or_else(|| panic!("q4 line {line:?}"));
            let category = row.split(',').next().unwrap_or_default().to_string();
            match diff {
                "1" => {
                    let before = current.insert(category, row.to_string());
                    assert!(before.is_none(), "{workers} workers: {line:?} inserted over {before:?}");
                }
                "-1" => {
                    retractions += 1;
                    let before = current.remove(&category);
                    assert_eq!(before.as_deref(), Some(row), "{workers} workers: {line:?} retracts another row");
                }
                _ => panic!("{workers} workers: diff of {line:?}"),
            }
        }
        assert!(retractions > 0, "{workers} workers: the averages never revised");
        let mut last: Vec<String> = current.into_values().collect();
        last.sort();
        assert_same(&format!("q4 at {workers} workers, current rows at the end"), &expected, &last);
    }
}

#[test]
fn query_8_equals_a_batch_computation() {
    let dir = TempDir::new("nexmark-q8");
    // 60,000 events at 2,000 a second: 30 s of event time, three 10 s windows.
    let options = "count=60000,seed=19,disorder_ms=500,events_per_sec=2000,partitions=4";
    let events = generate(&dir, "input", options, 1, "csv");
    let size = 10_000u64;
    let window = |ts: u64| ts - ts % size;
    let mut auctions_per_seller: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for auction in events.auctions.iter().map(|l| Auction::parse(l)) {
        *auctions_per_seller.entry((auction.seller, window(auction.ts_ms))).or_default() += 1;
    }
    let mut expected = Vec::new();
    let mut several = 0;
    let mut other_window_only = 0;
    for person in events.persons.iter().map(|l| Person::parse(l)) {
        let start = window(person.ts_ms);
        match auctions_per_seller.get(&(person.id, start)) {
            Some(n) => {
                expected.push(format!("{},{},{start}", person.id, person.name));
                several += usize::from(*n > 1);
            }
            None if auctions_per_seller.keys().any(|(seller, _)| *seller == person.id) => other_window_only += 1,
            None => {}
        }
    }
    expected.sort();
    // The rows must depend on the windows and be one per person, not one per auction.
    assert!(expected.len() >= 50, "q8 finds only {} persons", expected.len());
    assert!(several >= 10, "only {several} persons with several auctions in their window");
    assert!(other_window_only >= 10, "only {other_window_only} persons selling only in another window");

    let sources = gen_sources(&["persons", "auctions"], options);
    let q8 = run_on_1_and_2_workers(&dir, "q8", "nexmark-q8", &sources, "new_users", "id,name,window_start_ms");
    assert_same("q8", &expected, &q8);
}
