//! The Nexmark record types.
//!
//! CSV columns, in order:
//! * `Person`: `id,name,email_address,credit_card,city,state,ts_ms`
//! * `Auction`: `id,item_name,description,initial_bid_cents,reserve_cents,ts_ms,expires_ms,seller,category`
//! * `Bid`: `auction,bidder,price_cents,channel,ts_ms`
//!
//! Prices are integer cents. The specification's `url` of a bid and the `extra` padding of every
//! event are left out: no query reads them, and they would only add bytes to copy.

use paystream_engine::csv_record;

use crate::text::ShortText;

csv_record! {
    /// A person who sells or bids.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Person {
        /// Person id, from 1000 up in creation order.
        pub id: u64,
        /// Full name.
        pub name: ShortText,
        /// E-mail address.
        pub email_address: ShortText,
        /// Credit card number, four groups of four digits.
        pub credit_card: ShortText,
        /// City.
        pub city: ShortText,
        /// US state code.
        pub state: ShortText,
        /// Event time: when the person registered, ms since the Unix epoch.
        pub ts_ms: u64,
    }
}

csv_record! {
    /// An item put up for auction.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Auction {
        /// Auction id, from 1000 up in creation order.
        pub id: u64,
        /// The item's name.
        pub item_name: ShortText,
        /// Its description.
        pub description: ShortText,
        /// The opening price, cents.
        pub initial_bid_cents: u64,
        /// The lowest price the seller accepts, cents.
        pub reserve_cents: u64,
        /// Event time: when the auction opened, ms since the Unix epoch.
        pub ts_ms: u64,
        /// When it closes, ms since the Unix epoch.
        pub expires_ms: u64,
        /// The seller, a person id.
        pub seller: u64,
        /// Category id, 10 to 14.
        pub category: u64,
    }
}

csv_record! {
    /// A bid on an auction.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Bid {
        /// The auction bid on.
        pub auction: u64,
        /// The bidder, a person id.
        pub bidder: u64,
        /// The price offered, cents.
        pub price_cents: u64,
        /// Where the bid came from (`Google`, `Facebook`, `Baidu`, `Apple`).
        pub channel: ShortText,
        /// Event time: when the bid was made, ms since the Unix epoch.
        pub ts_ms: u64,
    }
}
