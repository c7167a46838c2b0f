// Who may ask (--allow, --deny) and who may write (--upload-allow): lists of
// address prefixes read from the command line, and the one decision the
// listener asks of them before a request is admitted, mapped, opened or
// fetched. The rules are flags, fixed for the server's life: SIGHUP rereads
// only the --map-file.
package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// accessRules are the client address rules. With allow empty every client
// not denied may read; a denial wins over an allowance; with uploadAllow
// set, only its clients (still allowed and not denied) may write.
type accessRules struct {
	allow, deny, uploadAllow prefixList
}

// permits reports whether client may make a request op (RRQ or WRQ). An
// IPv4-mapped IPv6 client (on a dual-stack socket) is matched as IPv4, and
// a zone never keeps a link-local client from matching.
func (a *accessRules) permits(client netip.Addr, op uint16) bool {
	client = client.Unmap().WithZone("")
	switch {
	case a.deny.contains(client):
		return false
	case len(a.allow) > 0 && !a.allow.contains(client):
		return false
	case op == opWRQ && len(a.uploadAllow) > 0 && !a.uploadAllow.contains(client):
		return false
	}
	return true
}

// prefixList is a list of address prefixes, IPv4 ones as IPv4 (never
// IPv4-mapped), so that an unmapped client address is all they are matched
// against.
type prefixList []netip.Prefix

func (l prefixList) contains(addr netip.Addr) bool {
	for _, p := range l {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// parsePrefixList reads one flag value: prefixes (192.0.2.0/24,
// 2001:db8::/32) or bare addresses (/32 or /128), separated by commas or
// whitespace. It refuses what would match other than it reads: host bits
// set (10.0.0.1/8, a slip for 10.0.0.0/8 or 10.0.0.1/32), a zone (the rules
// match addresses, not interfaces), and an IPv4-mapped prefix shorter than
// /96 (it would reach beyond IPv4). An IPv4-mapped prefix of /96 or longer
// is kept as the IPv4 prefix it stands for.
func parsePrefixList(value string) (prefixList, error) {
	var list prefixList
	for _, item := range strings.FieldsFunc(value, func(c rune) bool { return c == ',' || c == ' ' || c == '\t' || c == '\n' }) {
		p, why := parsePrefix(item)
		if why != "" {
			return nil, fmt.Errorf("%q: %s", item, why)
		}
		list = append(list, p)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("no address or prefix in %q", value)
	}
	return list, nil
}

// parsePrefix reads one prefix or bare address of a list, or says why not.
func parsePrefix(item string) (netip.Prefix, string) {
	if strings.Contains(item, "%") {
		return netip.Prefix{}, "a zone (%NAME) cannot be matched, only addresses"
	}
	p, err := netip.ParsePrefix(item)
	if !strings.Contains(item, "/") {
		var addr netip.Addr
		addr, err = netip.ParseAddr(item)
		p = netip.PrefixFrom(addr, addr.BitLen())
	}
	if err != nil {
		return p, "not an address or prefix (such as 192.0.2.0/24 or 2001:db8::/32)"
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return p, "an IPv4-mapped prefix must be /96 or longer (IPv4 clients are matched as IPv4)"
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if masked := p.Masked(); masked != p {
		// By hand: Prefix.String would cost 160 bytes more of xz on mipsle.
		return p, "host bits set: the prefix is " + masked.Addr().String() + "/" + strconv.Itoa(p.Bits()) +
			" (or the address alone is /" + strconv.Itoa(p.Addr().BitLen()) + ")"
	}
	return p, ""
}
