//! A rule's expressions: registers, implicit dependencies, loads and
//! comparisons, the way `nft` emits them.

use super::*;

impl Encoder<'_> {
    pub(super) fn rule(&mut self, t: &TableRef, r: &RuleDef) -> Result<(), NftError> {
        let mut cx = RuleCx {
            family: t.family,
            reg_low: 0,
            nfproto: None,
            exprs: Attrs::default(),
        };
        for e in &r.exprs {
            self.expr(t, &mut cx, e)?;
        }
        let mut a = Attrs::default();
        a.put_str(NFTA_RULE_TABLE, t.name.as_str());
        a.put_str(NFTA_RULE_CHAIN, r.chain.as_str());
        let body = cx.exprs.buf;
        a.nest(NFTA_RULE_EXPRESSIONS, |a| a.buf.extend_from_slice(&body));
        if let Some(c) = &r.comment {
            a.put(
                NFTA_RULE_USERDATA,
                &comment_udata(NFTNL_UDATA_RULE_COMMENT, c.as_str()),
            );
        }
        let w = format!("add rule {} {} {}", t.family.as_str(), t.name, r.chain);
        self.push(t, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a, w);
        Ok(())
    }

    /// An anonymous constant set of `vals` (keyword bits of `ty`), as nft
    /// makes for `{ a, b }`: returns its id.
    fn anon_set(&mut self, t: &TableRef, ty: u32, vals: &[u32]) -> u32 {
        let id = self.id();
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_TABLE, t.name.as_str());
        a.put_str(NFTA_SET_NAME, "__set%d");
        a.put_u32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
        a.put_u32(NFTA_SET_KEY_TYPE, ty);
        a.put_u32(NFTA_SET_KEY_LEN, 4);
        a.put_u32(NFTA_SET_ID, id);
        a.nest(NFTA_SET_DESC, |a| {
            a.put_u32(NFTA_SET_DESC_SIZE, vals.len() as u32)
        });
        let mut ud = Vec::new();
        udata(
            &mut ud,
            NFTNL_UDATA_SET_KEYBYTEORDER,
            &BYTEORDER_HOST_ENDIAN.to_ne_bytes(),
        );
        a.put(NFTA_SET_USERDATA, &ud);
        let w = format!("add anonymous set {} {}", t.family.as_str(), t.name);
        self.push(t, NFT_MSG_NEWSET, NLM_F_CREATE, a, w);
        let mut a = Attrs::default();
        a.put_str(NFTA_SET_ELEM_LIST_TABLE, t.name.as_str());
        a.put_str(NFTA_SET_ELEM_LIST_SET, "__set%d");
        a.put_u32(NFTA_SET_ELEM_LIST_SET_ID, id);
        a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
            for v in vals {
                a.nest(NFTA_LIST_ELEM, |a| {
                    a.data_value(NFTA_SET_ELEM_KEY, &v.to_ne_bytes())
                });
            }
        });
        let w = format!("add element {} {} (anonymous)", t.family.as_str(), t.name);
        self.push(t, NFT_MSG_NEWSETELEM, NLM_F_CREATE, a, w);
        id
    }

    fn expr(&mut self, t: &TableRef, cx: &mut RuleCx, e: &Expr) -> Result<(), NftError> {
        match e {
            Expr::Match { left, op, right } => self.relational(t, cx, left, *op, right),
            Expr::Counter => {
                cx.expr("counter", |_| {});
                Ok(())
            }
            Expr::CounterRef(n) => {
                cx.expr("objref", |a| {
                    a.put_u32(NFTA_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER);
                    a.put_str(NFTA_OBJREF_IMM_NAME, n.as_str());
                });
                Ok(())
            }
            Expr::Limit { rate, per, burst } => {
                let unit: u64 = match per {
                    LimitPer::Second => 1,
                    LimitPer::Minute => 60,
                };
                cx.expr("limit", |a| {
                    a.u64(NFTA_LIMIT_RATE, u64::from(*rate));
                    a.u64(NFTA_LIMIT_UNIT, unit);
                    a.put_u32(NFTA_LIMIT_BURST, *burst);
                    a.put_u32(NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS);
                    a.put_u32(NFTA_LIMIT_FLAGS, 0);
                });
                Ok(())
            }
            Expr::Log(p) => {
                cx.expr("log", |a| a.put_str(NFTA_LOG_PREFIX, p.as_str()));
                Ok(())
            }
            Expr::Masquerade => {
                cx.expr("masq", |_| {});
                Ok(())
            }
            Expr::Return => cx.verdict(NFT_RETURN, None),
            Expr::Accept => cx.verdict(NF_ACCEPT, None),
            Expr::Drop => cx.verdict(NF_DROP, None),
            Expr::Jump(c) => cx.verdict(NFT_JUMP, Some(c)),
            Expr::Goto(c) => cx.verdict(NFT_GOTO, Some(c)),
            Expr::DnatMap {
                v6,
                key,
                addrs,
                ports,
            } => {
                cx.dependency(key)?;
                let addr_reg = cx.alloc(4);
                let ai = self.set_info(t, addrs)?;
                cx.load(key, addr_reg, ai.concat_interval())?;
                cx.lookup(addrs, None, addr_reg, Some(reg(addr_reg)), false);
                let port_reg = cx.alloc(4);
                let pi = self.set_info(t, ports)?;
                cx.load(key, port_reg, pi.concat_interval())?;
                cx.lookup(ports, None, port_reg, Some(reg(port_reg)), false);
                let fam = if *v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
                cx.expr("nat", |a| {
                    a.put_u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
                    a.put_u32(NFTA_NAT_FAMILY, u32::from(fam));
                    a.put_u32(NFTA_NAT_REG_ADDR_MIN, reg(addr_reg));
                    a.put_u32(NFTA_NAT_REG_PROTO_MIN, reg(port_reg));
                    a.put_u32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                });
                cx.release(8);
                Ok(())
            }
            Expr::VerdictMap { key, map } => {
                cx.dependency(key)?;
                let info = self.set_info(t, map)?;
                let n = units(key);
                let r = cx.alloc(n);
                cx.load(key, r, info.concat_interval())?;
                cx.lookup(map, None, r, Some(NFT_REG_VERDICT), false);
                cx.release(n);
                Ok(())
            }
        }
    }

    fn relational(
        &mut self,
        t: &TableRef,
        cx: &mut RuleCx,
        left: &Lhs,
        op: Op,
        right: &Rhs,
    ) -> Result<(), NftError> {
        cx.dependency(left)?;
        match right {
            Rhs::Set(name) => {
                let info = self.set_info(t, name)?;
                let n = units(left);
                let r = cx.alloc(n);
                cx.load(left, r, info.concat_interval())?;
                cx.lookup(name, None, r, None, op == Op::Ne);
                cx.release(n);
            }
            Rhs::Keywords(ks) => {
                let ty = match left {
                    Lhs::CtState => TYPE_CT_STATE,
                    _ => return Err(bad(format!("a keyword set on {left:?}"))),
                };
                let vals = ks
                    .iter()
                    .map(|k| keyword(left, k))
                    .collect::<Result<Vec<_>, _>>()?;
                let vals: Vec<u32> = vals
                    .iter()
                    .map(|v| {
                        let mut b = [0u8; 4];
                        b[..v.len().min(4)].copy_from_slice(&v[..v.len().min(4)]);
                        u32::from_ne_bytes(b)
                    })
                    .collect();
                let id = self.anon_set(t, ty, &vals);
                let r = cx.alloc(1);
                cx.load(left, r, false)?;
                cx.lookup_anon(id, r, op == Op::Ne);
                cx.release(1);
            }
            Rhs::Keyword(k) => {
                let v = keyword(left, k)?;
                let n = units(left);
                let r = cx.alloc(n);
                cx.load(left, r, false)?;
                match op {
                    Op::In => {
                        let zero = vec![0u8; v.len()];
                        cx.expr("bitwise", |a| {
                            a.put_u32(NFTA_BITWISE_SREG, reg(r));
                            a.put_u32(NFTA_BITWISE_DREG, reg(r));
                            a.put_u32(NFTA_BITWISE_LEN, v.len() as u32);
                            a.data_value(NFTA_BITWISE_MASK, &v);
                            a.data_value(NFTA_BITWISE_XOR, &zero);
                        });
                        cx.cmp(r, NFT_CMP_NEQ, &zero);
                    }
                    Op::Eq => cx.cmp(r, NFT_CMP_EQ, &v),
                    Op::Ne => cx.cmp(r, NFT_CMP_NEQ, &v),
                }
                cx.release(n);
                if let (Lhs::NfProto, Op::Eq) = (left, op) {
                    cx.nfproto = Some(*k == "ipv6");
                }
            }
            Rhs::Value(v) => {
                let cmp_op = match op {
                    Op::Eq => NFT_CMP_EQ,
                    Op::Ne => NFT_CMP_NEQ,
                    Op::In => return Err(bad(format!("`in` with a value ({v})"))),
                };
                let n = units(left);
                let r = cx.alloc(n);
                match (left, v) {
                    (Lhs::Saddr { v6 } | Lhs::Daddr { v6 }, Value::Prefix(p)) => {
                        let full = if *v6 { 16 } else { 4 };
                        let net = match p.network() {
                            IpAddr::V4(a) => a.octets().to_vec(),
                            IpAddr::V6(a) => a.octets().to_vec(),
                        };
                        let bits = usize::from(p.prefix_len());
                        let off = addr_offset(left);
                        if bits % 8 == 0 {
                            // nft loads only the prefix's bytes
                            let len = bits / 8;
                            cx.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len as u32, r);
                            cx.cmp(r, cmp_op, &net[..len]);
                        } else {
                            cx.payload(NFT_PAYLOAD_NETWORK_HEADER, off, full, r);
                            let mut mask = vec![0u8; full as usize];
                            for (i, m) in mask.iter_mut().enumerate() {
                                let have = bits.saturating_sub(i * 8).min(8);
                                *m = if have == 0 { 0 } else { 0xffu8 << (8 - have) };
                            }
                            let zero = vec![0u8; full as usize];
                            cx.expr("bitwise", |a| {
                                a.put_u32(NFTA_BITWISE_SREG, reg(r));
                                a.put_u32(NFTA_BITWISE_DREG, reg(r));
                                a.put_u32(NFTA_BITWISE_LEN, full);
                                a.data_value(NFTA_BITWISE_MASK, &mask);
                                a.data_value(NFTA_BITWISE_XOR, &zero);
                            });
                            cx.cmp(r, cmp_op, &net);
                        }
                    }
                    (_, Value::PortRange(lo, hi)) => {
                        cx.load(left, r, false)?;
                        if op == Op::Eq {
                            cx.cmp(r, NFT_CMP_GTE, &lo.to_be_bytes());
                            cx.cmp(r, NFT_CMP_LTE, &hi.to_be_bytes());
                        } else {
                            cx.expr("range", |a| {
                                a.put_u32(NFTA_RANGE_SREG, reg(r));
                                a.put_u32(NFTA_RANGE_OP, NFT_RANGE_NEQ);
                                a.data_value(NFTA_RANGE_FROM_DATA, &lo.to_be_bytes());
                                a.data_value(NFTA_RANGE_TO_DATA, &hi.to_be_bytes());
                            });
                        }
                    }
                    (Lhs::IifGroup, Value::IfGroup(g)) => {
                        // a device group is a host-order u32
                        cx.load(left, r, false)?;
                        cx.cmp(r, cmp_op, &g.to_ne_bytes());
                    }
                    _ => {
                        let types = lhs_types(left)?;
                        let bytes = exact(v, &types)?;
                        cx.load(left, r, false)?;
                        cx.cmp(r, cmp_op, &bytes);
                    }
                }
                cx.release(n);
            }
        }
        Ok(())
    }
}

/// nft's register numbering: offsets in 32-bit words, given as a 128-bit
/// register where aligned (for older kernels), else as a 32-bit one.
pub(super) fn reg(off: u32) -> u32 {
    if off.is_multiple_of(4) {
        NFT_REG_1 + off / 4
    } else {
        NFT_REG32_00 + off
    }
}

/// The length in bytes of what `l` loads.
fn lhs_len(l: &Lhs) -> usize {
    match l {
        Lhs::Saddr { v6 } | Lhs::Daddr { v6 } => {
            if *v6 {
                16
            } else {
                4
            }
        }
        Lhs::ThDport => 2,
        Lhs::L4Proto | Lhs::NfProto => 1,
        Lhs::IifName | Lhs::OifName => IFNAMSIZ,
        Lhs::IifGroup => 4,
        Lhs::FibDaddrType | Lhs::CtStatus | Lhs::CtState => 4,
        Lhs::Concat(p) => p.iter().map(|x| pad4(lhs_len(x))).sum(),
    }
}

/// 32-bit registers `l` takes.
fn units(l: &Lhs) -> u32 {
    (lhs_len(l).div_ceil(4)) as u32
}

fn addr_offset(l: &Lhs) -> u32 {
    match l {
        Lhs::Saddr { v6: false } => 12,
        Lhs::Daddr { v6: false } => 16,
        Lhs::Saddr { v6: true } => 8,
        _ => 24,
    }
}

/// Key types of a value compared with `l`.
fn lhs_types(l: &Lhs) -> Result<Vec<KeyType>, NftError> {
    Ok(match l {
        Lhs::Saddr { v6 } | Lhs::Daddr { v6 } => vec![KeyType::addr(*v6)],
        Lhs::ThDport => vec![KeyType::InetService],
        Lhs::L4Proto => vec![KeyType::InetProto],
        Lhs::IifName => vec![KeyType::IfName],
        Lhs::Concat(p) => p
            .iter()
            .map(lhs_types)
            .collect::<Result<Vec<_>, _>>()?
            .concat(),
        other => return Err(bad(format!("a value compared with {other:?}"))),
    })
}

/// The bytes a keyword of nft's grammar stands for, as `l` loads them.
fn keyword(l: &Lhs, k: &str) -> Result<Vec<u8>, NftError> {
    let v: Option<Vec<u8>> = match (l, k) {
        (Lhs::NfProto, "ipv4") => Some(vec![NFPROTO_IPV4]),
        (Lhs::NfProto, "ipv6") => Some(vec![NFPROTO_IPV6]),
        (Lhs::FibDaddrType, "local") => Some(RTN_LOCAL.to_ne_bytes().to_vec()),
        (Lhs::CtStatus, "dnat") => Some(IPS_DST_NAT.to_ne_bytes().to_vec()),
        (Lhs::CtStatus, "snat") => Some(IPS_SRC_NAT.to_ne_bytes().to_vec()),
        (Lhs::CtState, s) => match s {
            "invalid" => Some(NF_CT_STATE_INVALID),
            "established" => Some(NF_CT_STATE_ESTABLISHED),
            "related" => Some(NF_CT_STATE_RELATED),
            "new" => Some(NF_CT_STATE_NEW),
            "untracked" => Some(NF_CT_STATE_UNTRACKED),
            _ => None,
        }
        .map(|b| b.to_ne_bytes().to_vec()),
        (Lhs::L4Proto, "icmp") => Some(vec![IPPROTO_ICMP]),
        (Lhs::L4Proto, "ipv6-icmp") => Some(vec![IPPROTO_ICMPV6]),
        (Lhs::L4Proto, p) => crate::types::L4Proto::parse(p).map(|p| vec![proto_num(p)]),
        (Lhs::IifName | Lhs::OifName, name) if name.len() < 16 => {
            let mut v = name.as_bytes().to_vec();
            v.resize(16, 0);
            Some(v)
        }
        _ => None,
    };
    v.ok_or_else(|| bad(format!("keyword {k:?} for {l:?}")))
}

/// One rule's expressions being written.
struct RuleCx {
    family: Family,
    /// nft's register allocator: the next free 32-bit word.
    reg_low: u32,
    /// The layer-3 protocol already matched (`Some(v6)`).
    nfproto: Option<bool>,
    exprs: Attrs,
}

impl RuleCx {
    fn alloc(&mut self, n: u32) -> u32 {
        let r = self.reg_low;
        self.reg_low += n;
        r
    }

    fn release(&mut self, n: u32) {
        self.reg_low = self.reg_low.saturating_sub(n);
    }

    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Attrs)) {
        self.exprs.nest(NFTA_LIST_ELEM, |a| {
            a.put_str(NFTA_EXPR_NAME, name);
            a.nest(NFTA_EXPR_DATA, data);
        });
    }

    fn verdict(&mut self, code: i32, chain: Option<&Name>) -> Result<(), NftError> {
        self.expr("immediate", |a| {
            a.put_u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            a.verdict(NFTA_IMMEDIATE_DATA, code, chain);
        });
        Ok(())
    }

    fn cmp(&mut self, r: u32, op: u32, data: &[u8]) {
        self.expr("cmp", |a| {
            a.put_u32(NFTA_CMP_SREG, reg(r));
            a.put_u32(NFTA_CMP_OP, op);
            a.data_value(NFTA_CMP_DATA, data);
        });
    }

    fn payload(&mut self, base: u32, off: u32, len: u32, r: u32) {
        self.expr("payload", |a| {
            a.put_u32(NFTA_PAYLOAD_DREG, reg(r));
            a.put_u32(NFTA_PAYLOAD_BASE, base);
            a.put_u32(NFTA_PAYLOAD_OFFSET, off);
            a.put_u32(NFTA_PAYLOAD_LEN, len);
        });
    }

    fn meta(&mut self, key: u32, r: u32) {
        self.expr("meta", |a| {
            a.put_u32(NFTA_META_KEY, key);
            a.put_u32(NFTA_META_DREG, reg(r));
        });
    }

    fn lookup(&mut self, set: &Name, id: Option<u32>, r: u32, dreg: Option<u32>, inv: bool) {
        self.expr("lookup", |a| {
            a.put_u32(NFTA_LOOKUP_SREG, reg(r));
            if let Some(d) = dreg {
                a.put_u32(NFTA_LOOKUP_DREG, d);
            }
            a.put_str(NFTA_LOOKUP_SET, set.as_str());
            if let Some(id) = id {
                a.put_u32(NFTA_LOOKUP_SET_ID, id);
            }
            if inv {
                a.put_u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
    }

    fn lookup_anon(&mut self, id: u32, r: u32, inv: bool) {
        self.expr("lookup", |a| {
            a.put_u32(NFTA_LOOKUP_SREG, reg(r));
            a.put_str(NFTA_LOOKUP_SET, "__set%d");
            a.put_u32(NFTA_LOOKUP_SET_ID, id);
            if inv {
                a.put_u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
    }

    /// nft's implicit `meta nfproto ipv4|ipv6` before an address match of
    /// an `inet` table, unless the rule already has it.
    fn dependency(&mut self, l: &Lhs) -> Result<(), NftError> {
        if !matches!(self.family, Family::Inet | Family::Bridge) {
            return Ok(());
        }
        let mut want = None;
        let mut check = |x: &Lhs| {
            if let Lhs::Saddr { v6 } | Lhs::Daddr { v6 } = x {
                want = Some(*v6);
            }
        };
        match l {
            Lhs::Concat(p) => p.iter().for_each(&mut check),
            x => check(x),
        }
        let Some(v6) = want else { return Ok(()) };
        if self.nfproto == Some(v6) {
            return Ok(());
        }
        let r = self.alloc(1);
        if self.family == Family::Bridge {
            // bridge: nft's dependency is the frame's protocol
            self.meta(NFT_META_PROTOCOL, r);
            let p = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
            self.cmp(r, NFT_CMP_EQ, &p.to_be_bytes());
        } else {
            self.meta(NFT_META_NFPROTO, r);
            self.cmp(
                r,
                NFT_CMP_EQ,
                &[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
            );
        }
        self.release(1);
        self.nfproto = Some(v6);
        Ok(())
    }

    /// Loads `l` into registers from `r` on; `interval_concat`: the key of
    /// a concatenated interval set, where nft converts host-order fields.
    fn load(&mut self, l: &Lhs, r: u32, interval_concat: bool) -> Result<(), NftError> {
        match l {
            Lhs::Saddr { v6 } | Lhs::Daddr { v6 } => {
                let len = if *v6 { 16 } else { 4 };
                self.payload(NFT_PAYLOAD_NETWORK_HEADER, addr_offset(l), len, r);
            }
            Lhs::ThDport => self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, r),
            Lhs::L4Proto => {
                self.meta(NFT_META_L4PROTO, r);
                if interval_concat {
                    self.expr("byteorder", |a| {
                        a.put_u32(NFTA_BYTEORDER_SREG, reg(r));
                        a.put_u32(NFTA_BYTEORDER_DREG, reg(r));
                        a.put_u32(NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON);
                        a.put_u32(NFTA_BYTEORDER_LEN, 1);
                        a.put_u32(NFTA_BYTEORDER_SIZE, 2);
                    });
                }
            }
            Lhs::NfProto => self.meta(NFT_META_NFPROTO, r),
            Lhs::IifName => self.meta(NFT_META_IIFNAME, r),
            Lhs::IifGroup => self.meta(NFT_META_IIFGROUP, r),
            Lhs::OifName => self.meta(NFT_META_OIFNAME, r),
            Lhs::FibDaddrType => self.expr("fib", |a| {
                a.put_u32(NFTA_FIB_DREG, reg(r));
                a.put_u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                a.put_u32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
            }),
            Lhs::CtStatus => self.expr("ct", |a| {
                a.put_u32(NFTA_CT_DREG, reg(r));
                a.put_u32(NFTA_CT_KEY, NFT_CT_STATUS);
            }),
            Lhs::CtState => self.expr("ct", |a| {
                a.put_u32(NFTA_CT_DREG, reg(r));
                a.put_u32(NFTA_CT_KEY, NFT_CT_STATE);
            }),
            Lhs::Concat(parts) => {
                let mut at = r;
                for p in parts {
                    if let Lhs::Concat(_) = p {
                        return Err(bad("a concatenation inside a concatenation".into()));
                    }
                    self.load(p, at, interval_concat)?;
                    at += units(p);
                }
            }
        }
        Ok(())
    }
}
