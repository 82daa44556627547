//! Random packet loss with nftables, for a kernel without `netem`.
//!
//! A [`LossRule`] is a table of its own in one namespace (`inet ftlab_loss_<n>`) with one
//! base chain on the chosen hook and two rules on the chosen match: the first counts every
//! matching packet, the second drops `numgen random mod 100 < percent` of them and counts
//! what it dropped. Dropping the guard deletes the table, so nothing else in the namespace
//! is touched, and several rules can coexist.

use std::fmt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cmd;
use crate::error::{LabError, Result};
use crate::netns::{NETNS_DIR, Netns};

/// The netfilter hook a [`LossRule`] sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Packets addressed to this namespace.
    Input,
    /// Packets this namespace sends.
    Output,
    /// Packets this namespace routes through.
    Forward,
    /// Every packet arriving, before routing.
    Prerouting,
    /// Every packet leaving, after routing.
    Postrouting,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Input => "input",
            Hook::Output => "output",
            Hook::Forward => "forward",
            Hook::Prerouting => "prerouting",
            Hook::Postrouting => "postrouting",
        })
    }
}

static NEXT_TABLE: AtomicU64 = AtomicU64::new(0);

/// Packet counts of a [`LossRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LossCounters {
    /// Packets that matched (dropped or not).
    pub matched: u64,
    /// Packets the rule dropped.
    pub dropped: u64,
}

/// What a [`LossRule`] drops: a hook, a percentage and a match. Build with
/// [`LossRule::percent`], finish with [`LossSpec::install`].
#[derive(Debug, Clone)]
pub struct LossSpec {
    percent: u8,
    hook: Hook,
    matches: Vec<String>,
}

impl LossSpec {
    /// Put the rule on `hook` (default [`Hook::Input`]).
    pub fn hook(mut self, hook: Hook) -> LossSpec {
        self.hook = hook;
        self
    }

    /// Only UDP packets to `port`.
    pub fn udp_dport(self, port: u16) -> LossSpec {
        self.matching(format!("udp dport {port}"))
    }

    /// Only UDP packets from `port`.
    pub fn udp_sport(self, port: u16) -> LossSpec {
        self.matching(format!("udp sport {port}"))
    }

    /// Only TCP packets to `port`.
    pub fn tcp_dport(self, port: u16) -> LossSpec {
        self.matching(format!("tcp dport {port}"))
    }

    /// Only packets that arrived on interface `ifname` (input, forward, prerouting).
    pub fn iif(self, ifname: &str) -> LossSpec {
        self.matching(format!("iifname \"{ifname}\""))
    }

    /// Only packets leaving on interface `ifname` (output, forward, postrouting).
    pub fn oif(self, ifname: &str) -> LossSpec {
        self.matching(format!("oifname \"{ifname}\""))
    }

    /// Any further nft match expression, e.g. `"ip daddr 198.18.0.2"`; all matches must
    /// hold.
    pub fn matching(mut self, expr: impl Into<String>) -> LossSpec {
        self.matches.push(expr.into());
        self
    }

    /// Installs the rule in `ns`.
    pub fn install(self, ns: &Netns) -> Result<LossRule> {
        LossRule::install(ns, self)
    }

    fn ruleset(&self, table: &str) -> String {
        let matches = self.matches.join(" ");
        // Priority -150 (mangle) runs before the filter chains a program under test might
        // add, so the loss applies to everything that matches.
        // nft refuses `< 100` after `mod 100` (the value must be 0..=99): all is no draw.
        let draw = if self.percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {} ", self.percent)
        };
        format!(
            "table inet {table} {{\n  chain loss {{\n    type filter hook {hook} priority -150; policy accept;\n    {matches} counter\n    {matches} {draw}counter drop\n  }}\n}}\n",
            hook = self.hook,
        )
    }
}

/// An installed random-loss rule; deleted when dropped.
///
/// ```no_run
/// use ferrotun_lab::{Lab, LossRule, Hook};
/// # fn main() -> ferrotun_lab::Result<()> {
/// let lab = Lab::two_hosts()?;
/// let loss = LossRule::percent(10)?.hook(Hook::Input).udp_dport(51820).install(lab.b().ns())?;
/// // ... traffic ...
/// assert!(loss.counters()?.dropped > 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LossRule {
    ns_name: String,
    table: String,
    spec: LossSpec,
    removed: bool,
}

impl LossRule {
    /// Starts a rule that drops `percent` (0..=100) of matching packets on the input hook
    /// of every packet; narrow it with the [`LossSpec`] methods.
    pub fn percent(percent: u8) -> Result<LossSpec> {
        if percent > 100 {
            return Err(LabError::invalid(
                "loss percentage",
                format!("{percent} (0 to 100)"),
            ));
        }
        Ok(LossSpec {
            percent,
            hook: Hook::Input,
            matches: Vec::new(),
        })
    }

    fn install(ns: &Netns, spec: LossSpec) -> Result<LossRule> {
        let table = format!("ftlab_loss_{}", NEXT_TABLE.fetch_add(1, Ordering::Relaxed));
        cmd::run_with_input(ns.command("nft").args(["-f", "-"]), &spec.ruleset(&table))?;
        Ok(LossRule {
            ns_name: ns.name().to_owned(),
            table,
            spec,
            removed: false,
        })
    }

    /// The drop percentage.
    pub fn loss_percent(&self) -> u8 {
        self.spec.percent
    }

    /// The nft table's name (family `inet`), for a look with `nft list table`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Reads the rule's packet counters.
    pub fn counters(&self) -> Result<LossCounters> {
        let mut list = Command::new("ip");
        list.args([
            "netns",
            "exec",
            &self.ns_name,
            "nft",
            "list",
            "table",
            "inet",
            &self.table,
        ]);
        let out = cmd::run(&mut list)?;
        let packets: Vec<u64> = out
            .lines()
            .filter_map(|line| {
                let rest = line.split("counter packets ").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect();
        match packets[..] {
            [matched, dropped] => Ok(LossCounters { matched, dropped }),
            _ => Err(LabError::Parse {
                command: cmd::render(&list),
                detail: "two \"counter packets N\" rules".into(),
                output: cmd::tail(&out, 1000),
            }),
        }
    }

    /// Deletes the rule now, reporting failure (dropping does the same silently).
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.delete()
    }

    fn delete(&self) -> Result<()> {
        cmd::run(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns_name,
            "nft",
            "delete",
            "table",
            "inet",
            &self.table,
        ]))?;
        Ok(())
    }
}

impl Drop for LossRule {
    fn drop(&mut self) {
        // A deleted namespace took the table with it.
        if !self.removed
            && std::path::Path::new(NETNS_DIR).join(&self.ns_name).exists()
            && let Err(e) = self.delete()
        {
            eprintln!(
                "ferrotun-lab: could not remove loss rule {}: {e}",
                self.table
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_counts_then_drops() {
        let spec = LossRule::percent(30)
            .expect("valid")
            .hook(Hook::Output)
            .udp_dport(9000);
        let rules = spec.ruleset("t");
        assert!(
            rules.contains("type filter hook output priority -150;"),
            "{rules}"
        );
        assert!(rules.contains("udp dport 9000 counter\n"), "{rules}");
        assert!(
            rules.contains("udp dport 9000 numgen random mod 100 < 30 counter drop"),
            "{rules}"
        );
        assert!(LossRule::percent(101).is_err());
    }
}
