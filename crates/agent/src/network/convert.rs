//! Pure conversions between the agent API's textual network fields and
//! netlink values: hardware addresses, address/mask pairs, route
//! destinations.

use std::net::IpAddr;

use capsa_protocols::types::{IPAddress, IPFamily};

use super::NetworkError;

/// `02:42:ac:11:00:02` as bytes.
pub fn parse_mac(s: &str) -> Result<Vec<u8>, NetworkError> {
    let bad = || NetworkError::HwAddr(s.to_string());
    let bytes = s
        .split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        })
        .collect::<Result<Vec<u8>, _>>()?;
    if bytes.len() != 6 {
        return Err(bad());
    }
    Ok(bytes)
}

/// Bytes as `02:42:ac:11:00:02` (lower case, as `ip link` shows them).
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A prefix length from a mask: `24`, or `255.255.255.0` for IPv4.
pub fn prefix_len(mask: &str, addr: IpAddr) -> Result<u8, NetworkError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bad = || NetworkError::Mask(mask.to_string(), addr);
    if mask.is_empty() {
        return Ok(max);
    }
    if let Ok(len) = mask.parse::<u8>() {
        return if len <= max { Ok(len) } else { Err(bad()) };
    }
    let ones = match mask.parse::<IpAddr>().map_err(|_| bad())? {
        IpAddr::V4(m) if addr.is_ipv4() => u32::from(m),
        _ => return Err(bad()),
    };
    // A netmask is ones then zeros.
    if ones.leading_ones() + ones.trailing_zeros() != 32 {
        return Err(bad());
    }
    Ok(ones.leading_ones() as u8)
}

/// An API address with its prefix length.
pub fn ip_address(a: &IPAddress) -> Result<(IpAddr, u8), NetworkError> {
    let addr: IpAddr = a
        .address
        .parse()
        .map_err(|_| NetworkError::Address(a.address.clone()))?;
    Ok((addr, prefix_len(&a.mask, addr)?))
}

/// The API form of an address: mask as a prefix length, as Kata's agent
/// answers.
pub fn to_ip_address(addr: IpAddr, prefix: u8) -> IPAddress {
    IPAddress {
        family: family(addr).into(),
        address: addr.to_string(),
        mask: prefix.to_string(),
        ..Default::default()
    }
}

pub fn family(addr: IpAddr) -> IPFamily {
    if addr.is_ipv4() {
        IPFamily::v4
    } else {
        IPFamily::v6
    }
}

/// A route destination: `""` or `default` is the default route (`None`),
/// `10.0.0.0/24` a prefix, a bare address a host route.
pub fn parse_dest(dest: &str) -> Result<Option<(IpAddr, u8)>, NetworkError> {
    if dest.is_empty() || dest == "default" {
        return Ok(None);
    }
    let (addr, mask) = dest.split_once('/').unwrap_or((dest, ""));
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| NetworkError::Destination(dest.to_string()))?;
    if !mask.is_empty() && mask.parse::<u8>().is_err() {
        return Err(NetworkError::Destination(dest.to_string()));
    }
    let len = prefix_len(mask, addr)?;
    Ok((len > 0).then_some((addr, len)))
}

/// The API form of a destination (`""` for the default route, like Kata).
pub fn format_dest(dest: Option<(IpAddr, u8)>) -> String {
    match dest {
        None => String::new(),
        Some((addr, len)) => format!("{addr}/{len}"),
    }
}

/// An optional address field (`""`: none).
pub fn parse_optional_ip(
    s: &str,
    what: fn(String) -> NetworkError,
) -> Result<Option<IpAddr>, NetworkError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| what(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_named() {
        let mac = parse_mac("02:42:AC:11:00:02").unwrap();
        assert_eq!(mac, vec![2, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(format_mac(&mac), "02:42:ac:11:00:02");
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            let e = parse_mac(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn masks_are_lengths_or_netmasks() {
        let v4: IpAddr = "10.0.0.2".parse().unwrap();
        let v6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(prefix_len("24", v4).unwrap(), 24);
        assert_eq!(prefix_len("255.255.255.0", v4).unwrap(), 24);
        assert_eq!(prefix_len("", v4).unwrap(), 32);
        assert_eq!(prefix_len("", v6).unwrap(), 128);
        assert_eq!(prefix_len("64", v6).unwrap(), 64);
        for bad in ["33", "255.0.255.0", "x", "255.255.255.0/1"] {
            assert!(prefix_len(bad, v4).is_err(), "{bad}");
        }
        assert!(prefix_len("129", v6).is_err());
        assert!(prefix_len("255.255.0.0", v6).is_err());
    }

    #[test]
    fn addresses_convert_both_ways() {
        let a = IPAddress {
            address: "192.168.7.2".into(),
            mask: "24".into(),
            ..Default::default()
        };
        let (ip, len) = ip_address(&a).unwrap();
        assert_eq!((ip.to_string().as_str(), len), ("192.168.7.2", 24));
        let back = to_ip_address(ip, len);
        assert_eq!(back.address, "192.168.7.2");
        assert_eq!(back.mask, "24");
        assert_eq!(back.family.enum_value_or_default(), IPFamily::v4);
        let bad = IPAddress {
            address: "192.168.7".into(),
            ..Default::default()
        };
        assert!(ip_address(&bad)
            .unwrap_err()
            .to_string()
            .contains("192.168.7"));
    }

    #[test]
    fn destinations() {
        assert_eq!(parse_dest("").unwrap(), None);
        assert_eq!(parse_dest("default").unwrap(), None);
        assert_eq!(parse_dest("0.0.0.0/0").unwrap(), None);
        let d = parse_dest("10.1.0.0/16").unwrap();
        assert_eq!(format_dest(d), "10.1.0.0/16");
        assert_eq!(format_dest(parse_dest("10.1.2.3").unwrap()), "10.1.2.3/32");
        assert_eq!(format_dest(parse_dest("fd00::/8").unwrap()), "fd00::/8");
        assert_eq!(format_dest(None), "");
        for bad in ["10.1.0.0/x", "10.1.0.0/33", "nowhere"] {
            assert!(parse_dest(bad).is_err(), "{bad}");
        }
    }
}
