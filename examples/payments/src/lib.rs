//! Payments: account balances, kept under `balance:<account>` as decimal
//! strings (a missing key is a balance of 0). No balance goes below zero.
//!
//! | input | effect |
//! | --- | --- |
//! | `{"op":"deposit","account":"alice","amount":30}` | adds 30 to alice |
//! | `{"op":"withdraw","account":"alice","amount":30}` | takes 30, or aborts `insufficient_funds` |
//! | `{"op":"transfer","from":"alice","to":"shop","amount":30}` | both, in one step |
//! | `{"op":"transfer",...,"read":true}` | the same, reading both balances |
//! | `{"op":"balances","accounts":["alice","shop"]}` | nothing (reads only) |
//!
//! Every op outputs the balances it touched, by account: `{"alice":70,"shop":30}`,
//! except `transfer`, which outputs what it moved:
//! `{"from":"alice","to":"shop","amount":30}`. A transfer is two adjustments
//! (escrow): it never reads the balances, only takes from the payer with the
//! bound "never below 0" and adds to the payee, so transfers to or from the
//! same account (a merchant's, paid by every order) do not wait for each
//! other. With `"read": true` it reads both balances, waits for other
//! transfers of those accounts like any write, and reports the balances it
//! leaves.
//! Amounts are positive integers; anything else, an empty account, a transfer
//! to the same account, an unknown op or an unknown field is `bad_input`.

use std::collections::BTreeMap;

use redstage_guest::{
    Abort, Access, Bounds, Outcome, Participant, Positive, Snapshot, checked_add, checked_sub,
};
use serde::{Deserialize, Serialize};

/// One payments operation, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// Credit `amount` to `account`.
    Deposit { account: String, amount: Positive },
    /// Debit `amount` from `account`, if its balance covers it.
    Withdraw { account: String, amount: Positive },
    /// Move `amount` from `from` to `to`; with `read`, by reading both
    /// balances rather than adjusting them.
    Transfer {
        from: String,
        to: String,
        amount: Positive,
        #[serde(default)]
        read: bool,
    },
    /// Report the balance of each of `accounts`.
    Balances { accounts: Vec<String> },
}

/// The payments participant.
#[derive(Debug)]
pub struct Payments;

impl Participant for Payments {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        match input {
            Input::Deposit { account, .. } | Input::Withdraw { account, .. } => {
                Ok(Access::new().write(balance_key(account)?))
            }
            Input::Transfer { from, to, read, .. } => {
                if from == to {
                    return Err(Abort::bad_input(format!(
                        "`from` and `to` must differ (both are `{from}`)"
                    )));
                }
                let (from, to) = (balance_key(from)?, balance_key(to)?);
                Ok(match read {
                    true => Access::new().write(from).write(to),
                    false => Access::new().adjust(from).adjust(to),
                })
            }
            Input::Balances { accounts } => {
                if accounts.is_empty() {
                    return Err(Abort::bad_input(
                        "`accounts` must list at least one account",
                    ));
                }
                let keys: Vec<String> = accounts
                    .iter()
                    .map(|account| balance_key(account))
                    .collect::<Result<_, _>>()?;
                Ok(Access::new().read_all(keys))
            }
        }
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        let mut ledger = Ledger::new(snapshot);
        match input {
            Input::Deposit { account, amount } => ledger.credit(account, *amount)?,
            Input::Withdraw { account, amount } => ledger.debit(account, *amount)?,
            Input::Transfer {
                from,
                to,
                amount,
                read: false,
            } => return transfer(from, to, *amount),
            Input::Transfer {
                from,
                to,
                amount,
                read: true,
            } => {
                ledger.debit(from, *amount)?;
                ledger.credit(to, *amount)?;
            }
            Input::Balances { accounts } => {
                for account in accounts {
                    ledger.balance(account)?;
                }
                return Outcome::new().output_json(&ledger.balances);
            }
        }
        ledger.into_outcome()
    }
}

redstage_guest::export!(Payments);

/// What an escrow transfer moved (the balances it leaves are not known to
/// it).
#[derive(Debug, Serialize)]
struct Moved<'a> {
    from: &'a str,
    to: &'a str,
    amount: i64,
}

/// A transfer as two adjustments: the payer never below 0.
fn transfer(from: &str, to: &str, amount: Positive) -> Result<Outcome, Abort> {
    let amount = amount.get();
    Outcome::new()
        .adjust(
            balance_key(from)?,
            -amount,
            Bounds::at_least(0),
            Abort::new(
                "insufficient_funds",
                format!("`{from}` cannot pay {amount}: the balance would go below 0"),
            ),
        )
        .adjust(
            balance_key(to)?,
            amount,
            Bounds::none(),
            Abort::new("overflow", format!("`{to}` cannot hold {amount} more")),
        )
        .output_json(&Moved { from, to, amount })
}

/// The balances one step has looked at, with its changes applied.
struct Ledger<'a> {
    snapshot: &'a Snapshot,
    balances: BTreeMap<&'a str, i64>,
}

impl<'a> Ledger<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        Self {
            snapshot,
            balances: BTreeMap::new(),
        }
    }

    fn balance(&mut self, account: &'a str) -> Result<i64, Abort> {
        if let Some(&balance) = self.balances.get(account) {
            return Ok(balance);
        }
        let balance = self.snapshot.get_i64(&balance_key(account)?)?;
        self.balances.insert(account, balance);
        Ok(balance)
    }

    fn credit(&mut self, account: &'a str, amount: Positive) -> Result<(), Abort> {
        let balance = checked_add(self.balance(account)?, amount.get())?;
        self.balances.insert(account, balance);
        Ok(())
    }

    fn debit(&mut self, account: &'a str, amount: Positive) -> Result<(), Abort> {
        let balance = self.balance(account)?;
        if balance < amount.get() {
            return Err(Abort::new(
                "insufficient_funds",
                format!("`{account}` has {balance}, cannot pay {amount}"),
            ));
        }
        self.balances
            .insert(account, checked_sub(balance, amount.get())?);
        Ok(())
    }

    /// Writes every balance looked at, and outputs them all.
    fn into_outcome(self) -> Result<Outcome, Abort> {
        let mut outcome = Outcome::new();
        for (account, &balance) in &self.balances {
            outcome = outcome.set_i64(balance_key(account)?, balance);
        }
        outcome.output_json(&self.balances)
    }
}

fn balance_key(account: &str) -> Result<String, Abort> {
    if account.is_empty() {
        return Err(Abort::bad_input("account names must not be empty"));
    }
    Ok(format!("balance:{account}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redstage_guest::testing::{self, TestOutcome};
    use serde_json::json;

    fn run(input: serde_json::Value, store: &[(&str, &str)]) -> Result<TestOutcome, Abort> {
        testing::run::<Payments>(&input.to_string(), store)
    }

    fn written(out: &TestOutcome) -> Vec<(&str, Option<&str>)> {
        out.writes
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
            .collect()
    }

    fn bad_input(input: serde_json::Value) -> String {
        let err = run(input.clone(), &[]).unwrap_err();
        assert_eq!(err.code, "bad_input", "{input}: {err}");
        err.message
    }

    #[test]
    fn deposit_credits_the_account() {
        let out = run(
            json!({"op": "deposit", "account": "alice", "amount": 30}),
            &[("balance:alice", "100")],
        )
        .unwrap();
        assert_eq!(written(&out), [("balance:alice", Some("130"))]);
        assert_eq!(out.output, json!({"alice": 130}));
    }

    #[test]
    fn deposit_opens_a_missing_account() {
        let out = run(json!({"op": "deposit", "account": "bob", "amount": 5}), &[]).unwrap();
        assert_eq!(written(&out), [("balance:bob", Some("5"))]);
    }

    #[test]
    fn withdraw_debits_the_account_down_to_zero() {
        let out = run(
            json!({"op": "withdraw", "account": "alice", "amount": 100}),
            &[("balance:alice", "100")],
        )
        .unwrap();
        assert_eq!(written(&out), [("balance:alice", Some("0"))]);
        assert_eq!(out.output, json!({"alice": 0}));
    }

    #[test]
    fn withdraw_beyond_the_balance_aborts() {
        let err = run(
            json!({"op": "withdraw", "account": "alice", "amount": 101}),
            &[("balance:alice", "100")],
        )
        .unwrap_err();
        assert_eq!(err.code, "insufficient_funds");
        assert_eq!(err.message, "`alice` has 100, cannot pay 101");

        let err = run(
            json!({"op": "withdraw", "account": "nobody", "amount": 1}),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.code, "insufficient_funds");
    }

    #[test]
    fn transfer_moves_the_amount_without_reading_the_balances() {
        let out = run(
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 30}),
            &[("balance:alice", "100")],
        )
        .unwrap();
        assert_eq!(
            out.access,
            Access::new().adjust("balance:alice").adjust("balance:shop")
        );
        assert_eq!(
            written(&out),
            [("balance:alice", Some("70")), ("balance:shop", Some("30"))]
        );
        assert_eq!(
            out.output,
            json!({"from": "alice", "to": "shop", "amount": 30})
        );
    }

    #[test]
    fn a_reading_transfer_reports_the_balances() {
        let out = run(
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 30, "read": true}),
            &[("balance:alice", "100")],
        )
        .unwrap();
        assert_eq!(
            out.access,
            Access::new().write("balance:alice").write("balance:shop")
        );
        assert_eq!(out.output, json!({"alice": 70, "shop": 30}));
    }

    #[test]
    fn transfer_beyond_the_balance_aborts() {
        let err = run(
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 30}),
            &[("balance:alice", "20"), ("balance:shop", "5")],
        )
        .unwrap_err();
        assert_eq!(err.code, "insufficient_funds");
        assert_eq!(
            err.message,
            "`alice` cannot pay 30: the balance would go below 0"
        );
        let err = run(
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 30, "read": true}),
            &[("balance:alice", "20"), ("balance:shop", "5")],
        )
        .unwrap_err();
        assert_eq!(err.message, "`alice` has 20, cannot pay 30");
    }

    #[test]
    fn overflow_aborts() {
        let max = i64::MAX.to_string();
        for read in [false, true] {
            let err = run(
                json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 1, "read": read}),
                &[("balance:alice", "1"), ("balance:shop", &max)],
            )
            .unwrap_err();
            assert_eq!(err.code, "overflow");
        }
        let err = run(
            json!({"op": "deposit", "account": "shop", "amount": 1}),
            &[("balance:shop", &max)],
        )
        .unwrap_err();
        assert_eq!(err.code, "overflow");
    }

    #[test]
    fn corrupt_balance_aborts() {
        let err = run(
            json!({"op": "deposit", "account": "alice", "amount": 1}),
            &[("balance:alice", "1e3")],
        )
        .unwrap_err();
        assert_eq!(err.code, "bad_value");
    }

    #[test]
    fn balances_reads_only_and_reports_each_account() {
        let out = run(
            json!({"op": "balances", "accounts": ["shop", "alice", "shop"]}),
            &[("balance:alice", "70")],
        )
        .unwrap();
        assert!(out.writes.is_empty());
        assert_eq!(
            out.access,
            Access::new().read("balance:alice").read("balance:shop")
        );
        assert_eq!(out.output, json!({"alice": 70, "shop": 0}));
    }

    #[test]
    fn amounts_must_be_positive_integers() {
        for amount in [json!(0), json!(-5), json!(0.5), json!("10"), json!(1e30)] {
            let message = bad_input(json!({"op": "deposit", "account": "a", "amount": amount}));
            assert!(
                message.contains("expected a positive 64-bit integer"),
                "{message}"
            );
        }
        let message = bad_input(json!({"op": "transfer", "from": "a", "to": "b"}));
        assert!(message.contains("missing field `amount`"), "{message}");
    }

    #[test]
    fn malformed_input_is_bad_input() {
        let message = bad_input(json!({"op": "refund", "account": "a", "amount": 1}));
        assert!(
            message.contains(
                "unknown variant `refund`, expected one of `deposit`, `withdraw`, `transfer`, `balances`"
            ),
            "{message}"
        );
        let message = bad_input(json!({"op": "transfer", "from": "a", "to": "a", "amount": 1}));
        assert_eq!(message, "`from` and `to` must differ (both are `a`)");
        let message = bad_input(json!({"op": "deposit", "account": "", "amount": 1}));
        assert_eq!(message, "account names must not be empty");
        let message = bad_input(json!({"op": "transfer", "from": "a", "to": "", "amount": 1}));
        assert_eq!(message, "account names must not be empty");
        let message = bad_input(json!({"op": "balances", "accounts": []}));
        assert_eq!(message, "`accounts` must list at least one account");
        let message = bad_input(json!({"op": "withdraw", "acount": "a", "amount": 1}));
        assert!(message.contains("unknown field `acount`"), "{message}");
        let err = testing::run::<Payments>("", &[]).unwrap_err();
        assert_eq!(err.code, "bad_input");
    }
}
