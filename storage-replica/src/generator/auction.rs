//! The auction house.
//!
//! - At tick 0 it creates [`ORGANIZATIONS`] organizations, [`USERS`] users
//!   (user `u` belongs to organization `u % ORGANIZATIONS`) and one account
//!   per organization.
//! - Rarely it updates one of them in place (a retraction of the old row and
//!   an insertion of the new one at the same tick): every
//!   [`ACCOUNT_PERIOD`]-th tick an account's balance changes, every
//!   [`USER_PERIOD`]-th tick a user's name, every
//!   [`ORGANIZATION_PERIOD`]-th tick an organization's name. The entities
//!   take turns, so the row an update retracts is computed from the tick.
//! - Tick `k` opens auction `k` (a seller and an item), open for
//!   [`AUCTION_TICKS`] ticks, and places one to [`MAX_BIDS_PER_TICK`] bids on
//!   open auctions; at tick `k + AUCTION_TICKS` auction `k` closes: it and
//!   all its bids are retracted. So every live bid names a live auction and
//!   every id names a live user or organization.
//!
//! The primary output, `auction`, has no columns and stays empty.

use tidemark_storage_types::{Datum, Diff, RelationDesc, Row, ScalarType};

use super::int;
use super::mix::below;

/// The generator's name in messages.
pub(super) const NAME: &str = "auction";
/// The outputs, the primary one first.
pub(super) const OUTPUTS: [&str; 6] = [
    "auction",
    "organizations",
    "users",
    "accounts",
    "auctions",
    "bids",
];

/// How many organizations there are (and accounts: one each).
pub(super) const ORGANIZATIONS: u64 = 10;
/// How many users there are.
pub(super) const USERS: u64 = 100;
/// How many ticks an auction stays open.
pub(super) const AUCTION_TICKS: u64 = 10;
/// The most bids one tick places.
pub(super) const MAX_BIDS_PER_TICK: u64 = 4;
/// Every this many ticks one account's balance changes.
pub(super) const ACCOUNT_PERIOD: u64 = 20;
/// Every this many ticks one user's name changes.
pub(super) const USER_PERIOD: u64 = 50;
/// Every this many ticks one organization's name changes.
pub(super) const ORGANIZATION_PERIOD: u64 = 1000;

/// Salts that keep the hashes of different choices apart.
const SALT_ORGANIZATION: u64 = 1;
const SALT_USER: u64 = 2;
const SALT_ACCOUNT: u64 = 3;
const SALT_SELLER: u64 = 4;
const SALT_ITEM: u64 = 5;
const SALT_BID_COUNT: u64 = 6;
const SALT_BID_AUCTION: u64 = 7;
const SALT_BUYER: u64 = 8;
const SALT_AMOUNT: u64 = 9;

const ITEMS: [&str; 8] = [
    "signed memorabilia",
    "city bar crawl",
    "best pizza in town",
    "gift basket",
    "custom art",
    "vintage bicycle",
    "concert tickets",
    "cooking class",
];
const ADJECTIVES: [&str; 8] = [
    "amber", "brisk", "coral", "dusky", "eager", "frosty", "gentle", "hazel",
];
const NOUNS: [&str; 8] = [
    "otter", "falcon", "maple", "harbor", "comet", "meadow", "lantern", "summit",
];

fn id(name: &'static str) -> (String, tidemark_storage_types::ColumnType) {
    (name.to_owned(), ScalarType::Int64.nullable(false))
}

fn relation(columns: &[(String, tidemark_storage_types::ColumnType)]) -> RelationDesc {
    columns
        .iter()
        .fold(RelationDesc::empty(), |desc, (name, column_type)| {
            desc.with_column(name.clone(), *column_type)
        })
}

/// The outputs with their relations, in [`OUTPUTS`] order.
pub(super) fn relations() -> Vec<(&'static str, RelationDesc)> {
    let string = |name: &str| (name.to_owned(), ScalarType::String.nullable(false));
    vec![
        ("auction", RelationDesc::empty()),
        ("organizations", relation(&[id("id"), string("name")])),
        (
            "users",
            relation(&[id("id"), id("organization_id"), string("name")]),
        ),
        (
            "accounts",
            relation(&[id("id"), id("organization_id"), id("balance")]),
        ),
        (
            "auctions",
            relation(&[id("id"), id("seller"), string("item"), id("end_tick")]),
        ),
        (
            "bids",
            relation(&[id("id"), id("buyer"), id("auction_id"), id("amount")]),
        ),
    ]
}

/// The updates of tick `tick` per output, in [`OUTPUTS`] order, not
/// consolidated.
pub(super) fn tick(tick: u64) -> Vec<(&'static str, Vec<(Row, Diff)>)> {
    let mut organizations = Vec::new();
    let mut users = Vec::new();
    let mut accounts = Vec::new();
    if tick == 0 {
        organizations.extend((0..ORGANIZATIONS).map(|org| (organization(org, 0), 1)));
        users.extend((0..USERS).map(|user_id| (user(user_id, 0), 1)));
        accounts.extend((0..ORGANIZATIONS).map(|account_id| (account(account_id, 0), 1)));
    } else {
        update_in_turn(
            tick,
            ORGANIZATION_PERIOD,
            ORGANIZATIONS,
            organization,
            &mut organizations,
        );
        update_in_turn(tick, USER_PERIOD, USERS, user, &mut users);
        update_in_turn(tick, ACCOUNT_PERIOD, ORGANIZATIONS, account, &mut accounts);
    }

    let mut auctions = vec![(auction(tick), 1)];
    let mut bids: Vec<(Row, Diff)> = bids_of_tick(tick)
        .into_iter()
        .map(|bid| (bid.row(), 1))
        .collect();
    if let Some(closing) = tick.checked_sub(AUCTION_TICKS) {
        auctions.push((auction(closing), -1));
        for placed in closing..tick {
            bids.extend(
                bids_of_tick(placed)
                    .into_iter()
                    .filter(|bid| bid.auction_id == closing)
                    .map(|bid| (bid.row(), -1)),
            );
        }
    }
    vec![
        ("auction", Vec::new()),
        ("organizations", organizations),
        ("users", users),
        ("accounts", accounts),
        ("auctions", auctions),
        ("bids", bids),
    ]
}

/// Adds to `rows` the update of one of `count` entities (made by `row` from
/// an id and a version) that `tick` makes, if it is one of the update ticks
/// of `period`: the old version out, the new one in.
fn update_in_turn(
    tick: u64,
    period: u64,
    count: u64,
    row: fn(u64, u64) -> Row,
    rows: &mut Vec<(Row, Diff)>,
) {
    if let Some((entity, version)) = turn(tick, period, count) {
        rows.push((row(entity, version - 1), -1));
        rows.push((row(entity, version), 1));
    }
}

/// Which entity an update at `tick` changes and its new version, when
/// `tick` is one of the period's update ticks: the `j`-th update tick
/// (`tick = j * period`, `j >= 1`) gives entity `(j - 1) % count` its
/// version `(j - 1) / count + 1`.
fn turn(tick: u64, period: u64, count: u64) -> Option<(u64, u64)> {
    if tick == 0 || !tick.is_multiple_of(period) {
        return None;
    }
    let turn = tick / period - 1;
    Some((turn % count, turn / count + 1))
}

/// A name for `entity` at `version`: consecutive versions differ in the
/// adjective, so an update always changes the row.
fn name(salt: u64, entity: u64, version: u64) -> String {
    let count = ADJECTIVES.len() as u64;
    let adjective = ADJECTIVES[((below(count, &[salt, entity]) + version) % count) as usize];
    let noun = NOUNS[below(NOUNS.len() as u64, &[salt, entity, version]) as usize];
    format!("{adjective} {noun} {entity}")
}

/// Organization `org` at `version`: `[id, name]`.
fn organization(org: u64, version: u64) -> Row {
    let name = name(SALT_ORGANIZATION, org, version);
    Row::pack([Datum::Int64(int(org)), Datum::String(&name)])
}

/// User `user_id` at `version`: `[id, organization_id, name]`.
fn user(user_id: u64, version: u64) -> Row {
    let name = name(SALT_USER, user_id, version);
    Row::pack([
        Datum::Int64(int(user_id)),
        Datum::Int64(int(user_id % ORGANIZATIONS)),
        Datum::String(&name),
    ])
}

/// Account `account_id` (of the organization with the same id) at
/// `version`: `[id, organization_id, balance]`.
fn account(account_id: u64, version: u64) -> Row {
    // The last three digits follow the version, so an update always
    // changes the balance.
    let balance = below(1_000, &[SALT_ACCOUNT, account_id, version]) * 1_000 + version % 1_000;
    Row::pack([
        Datum::Int64(int(account_id)),
        Datum::Int64(int(account_id)),
        Datum::Int64(int(balance)),
    ])
}

/// Auction `auction_id` (opened at that tick): `[id, seller, item,
/// end_tick]`.
fn auction(auction_id: u64) -> Row {
    let seller = below(USERS, &[SALT_SELLER, auction_id]);
    let item = ITEMS[below(ITEMS.len() as u64, &[SALT_ITEM, auction_id]) as usize];
    Row::pack([
        Datum::Int64(int(auction_id)),
        Datum::Int64(int(seller)),
        Datum::String(item),
        Datum::Int64(int(auction_id + AUCTION_TICKS)),
    ])
}

/// A bid.
struct Bid {
    id: u64,
    buyer: u64,
    auction_id: u64,
    amount: u64,
}

impl Bid {
    /// `[id, buyer, auction_id, amount]`.
    fn row(&self) -> Row {
        Row::pack([
            Datum::Int64(int(self.id)),
            Datum::Int64(int(self.buyer)),
            Datum::Int64(int(self.auction_id)),
            Datum::Int64(int(self.amount)),
        ])
    }
}

/// The bids tick `tick` places: each on an auction open at that tick (one
/// of the last [`AUCTION_TICKS`] opened, this tick's included).
fn bids_of_tick(tick: u64) -> Vec<Bid> {
    let count = 1 + below(MAX_BIDS_PER_TICK, &[SALT_BID_COUNT, tick]);
    let open = (tick + 1).min(AUCTION_TICKS);
    (0..count)
        .map(|index| Bid {
            id: tick * MAX_BIDS_PER_TICK + index,
            buyer: below(USERS, &[SALT_BUYER, tick, index]),
            auction_id: tick - below(open, &[SALT_BID_AUCTION, tick, index]),
            amount: 1 + below(1_000, &[SALT_AMOUNT, tick, index]),
        })
        .collect()
}
