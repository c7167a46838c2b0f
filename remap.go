// File name remapping (--map-file): tftpd-hpa's rules format (6.0: labels
// and jumps, "E" and "gg" included), read and applied here. A rules file
// is a list of rules tried from the top on the name a client sent; each
// rule has operation letters, an egrep-style regex and an optional
// replacement with \-escapes, and a ":label" line names the place a "j"
// rule goes on from. What the rules produce is an ordinary requested name
// afterwards: it is cleaned and resolved below the root like any other,
// so no rule can lead outside it.
package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

const (
	// defaultMapSteps is --map-steps' default: how many rules one mapping
	// may run, every rule tried (a "j" rule too) and every repeat of a "g"
	// or "gg" rule counted, as in tftpd-hpa 6.0, whose default this is. A rule set that
	// restarts ("s"), jumps back ("j") or repeats forever ends here instead
	// of holding a session.
	defaultMapSteps = 4096
	// maxMapSteps is the largest --map-steps: past it maxMapWork decides.
	maxMapSteps = 1 << 20
	// maxMappedName bounds the name while rules work on it: PATH_MAX, since
	// a longer name cannot be opened anyway.
	maxMappedName = 4096
	// maxMapWork bounds the matching work of one mapping, counted as
	// ere.cost: regex nodes × name bytes (what one match costs at most), so
	// a long name under a "g" rule (each repeat reads the name from its
	// start, as in tftp-hpa) costs a few milliseconds at worst. Real names
	// stay far below it: 1000 backslashes under "rg \\ /" need 4 million.
	maxMapWork = 1 << 23
)

// errNoRulesFile answers a SIGHUP without --map-file.
var errNoRulesFile = errors.New("no --map-file to reload")

// remapRule is one rule line of a rules file.
type remapRule struct {
	line        int
	re          *ere
	replacement string // or, for "j", the label to go on at
	rewrite     bool   // r: replace the match with the replacement
	global      bool   // g: repeat the rewrite while the regex matches
	sedGlobal   bool   // gg: each repeat searches the rest after the replacement
	exit        bool   // e: a match ends processing
	ifServable  bool   // E: a match whose result can be served ends processing
	restart     bool   // s: a match starts over at the first rule
	abort       bool   // a: a match refuses the request (ERROR 2)
	jump        bool   // j: a match goes on at the label
	inverse     bool   // ~: the rule fires when the regex does not match
	onlyRRQ     bool   // G: reads only
	onlyWRQ     bool   // P: writes only (with G: neither, as in tftpd-hpa)
	only4       bool   // 4: IPv4 clients only
	only6       bool   // 6: IPv6 clients only
	// needsMAC: the replacement has \m, so the rule is for clients whose
	// MAC address is known only (r-tftpd's extension).
	needsMAC bool
	// target is where a "j" rule goes on: the index of the rule after its
	// label; -1 for a rule that is no jump, or when the label is built from
	// escapes (\1, \i...) and looked up when the rule fires.
	target int
}

// remapRules is a parsed rules file.
type remapRules struct {
	file  string
	rules []remapRule
	// labels are the ":label" lines: each name's place, the index of the
	// rule after it.
	labels map[string]int
	// steps is --map-steps: how many rules one mapping may run.
	steps int
	// needsMAC: some rule has \m, so a mapping needs the client's MAC.
	needsMAC bool
}

// remapFileError is what is wrong with a rules file, and where.
type remapFileError struct {
	file string
	line int // 0 when the file as a whole is at fault
	why  string
}

func (e *remapFileError) Error() string {
	if e.line == 0 {
		return e.file + ": " + e.why
	}
	return e.file + ":" + strconv.Itoa(e.line) + ": " + e.why
}

// loadRemapRules reads and parses a rules file.
func loadRemapRules(file string) (*remapRules, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &remapFileError{file: file, why: err.Error()}
	}
	return parseRemapRules(file, string(data))
}

// parseRemapRules reads rules as tftpd-hpa does: fields are separated by
// unescaped whitespace, an unescaped "#" ends the line, and a line whose
// first field is empty holds no rule. A fourth field is ignored, as there,
// and so is what follows a label. A jump to a label the file does not
// have, or a label defined twice, is an error at its line.
func parseRemapRules(file, text string) (*remapRules, error) {
	rs := &remapRules{file: file, labels: map[string]int{}}
	labelLines := map[string]int{}
	for i, line := range strings.Split(text, "\n") {
		fields := splitRuleFields(line)
		if len(fields) == 0 {
			continue
		}
		fail := func(why string) error { return &remapFileError{file: file, line: i + 1, why: why} }
		if label, ok := strings.CutPrefix(fields[0], ":"); ok {
			if label == "" {
				return nil, fail(`a label needs a name after ":"`)
			}
			if at, dup := labelLines[label]; dup {
				return nil, fail(fmt.Sprintf("label %q is already defined on line %d", clip(label), at))
			}
			labelLines[label] = i + 1
			rs.labels[label] = len(rs.rules)
			continue
		}
		r, why := parseRule(fields)
		if why != "" {
			return nil, fail(why)
		}
		r.line = i + 1
		rs.rules = append(rs.rules, r)
		rs.needsMAC = rs.needsMAC || r.needsMAC
	}
	for i := range rs.rules {
		r := &rs.rules[i]
		if !r.jump || r.target < 0 {
			continue
		}
		label := string(r.expand(nil, "", nil, mapClient{}))
		target, ok := rs.labels[label]
		if !ok {
			return nil, &remapFileError{file: file, line: r.line, why: fmt.Sprintf("no label %q in the file", clip(label))}
		}
		r.target = target
	}
	return rs, nil
}

// splitRuleFields cuts a line into at most three fields. A backslash keeps
// the next byte in the field (whitespace and "#" included) and stays in it:
// the regex and the replacement give it its meaning.
func splitRuleFields(line string) []string {
	var fields []string
	i := 0
	for len(fields) < 3 {
		for i < len(line) && isRuleSpace(line[i]) {
			i++
		}
		start := i
		for i < len(line) && !isRuleSpace(line[i]) && line[i] != '#' {
			if line[i] == '\\' && i+1 < len(line) {
				i++
			}
			i++
		}
		if i == start {
			break
		}
		fields = append(fields, line[start:i])
	}
	return fields
}

// ruleConflicts are the operations that tftpd-hpa 6.0's manual says cannot
// be combined: a rule with both is refused at startup, as tftpd-hpa refuses
// all but "sj" (its code lets "s" win there; the manual forbids it).
var ruleConflicts = []string{"r~", "ra", "rj", "ea", "eE", "ej", "es", "Ea", "Ej", "Es", "sa", "sj", "aj"}

func parseRule(fields []string) (remapRule, string) {
	r := remapRule{target: -1}
	foldCase := false
	ops := fields[0]
	for i := 0; i < len(ops); i++ {
		switch c := ops[i]; c {
		case 'r':
			r.rewrite = true
		case 'g':
			r.sedGlobal = r.global // a second g makes gg
			r.global = true
		case 'i':
			foldCase = true
		case 'e':
			r.exit = true
		case 'E':
			r.ifServable = true
		case 's':
			r.restart = true
		case 'a':
			r.abort = true
		case 'j':
			r.jump = true
		case '~':
			r.inverse = true
		case 'G':
			r.onlyRRQ = true
		case 'P':
			r.onlyWRQ = true
		case '4':
			r.only4 = true
		case '6':
			r.only6 = true
		default:
			return r, fmt.Sprintf("unknown operation %q in %q (known: r g i e E s a j G P 4 6 ~)", c, clip(ops))
		}
	}
	for _, pair := range ruleConflicts {
		if strings.IndexByte(ops, pair[0]) >= 0 && strings.IndexByte(ops, pair[1]) >= 0 {
			if pair == "r~" {
				return r, "operations r and ~ cannot be combined: an inverted rule has no match to replace"
			}
			return r, fmt.Sprintf("operations %c and %c cannot be combined", pair[0], pair[1])
		}
	}
	r.global = r.global && r.rewrite
	r.sedGlobal = r.sedGlobal && r.rewrite
	if len(fields) < 2 {
		return r, "no regex after the operations"
	}
	re, why := compileRuleRegex(fields[1], foldCase)
	if why != "" {
		return r, why
	}
	r.re = re
	if len(fields) > 2 {
		r.replacement = fields[2]
	}
	r.needsMAC = hasEscape(r.replacement, "m")
	if r.jump {
		if r.replacement == "" {
			return r, "a j rule needs the label to jump to after its regex"
		}
		if !hasEscape(r.replacement, "0123456789ixm") {
			r.target = 0 // found once every label is known
		}
	}
	return r, ""
}

// hasEscape reports whether a replacement has one of the escapes named by
// the bytes of which: a group or the client's address or MAC (\0 to \9,
// \i, \x, \m) is known only when the rule fires.
func hasEscape(p, which string) bool {
	for i := 0; i+1 < len(p); i++ {
		if p[i] != '\\' {
			continue
		}
		i++
		if strings.IndexByte(which, p[i]) >= 0 {
			return true
		}
	}
	return false
}

// mapClient is what the replacement escapes \i, \x and \m stand for.
type mapClient struct {
	v4     bool
	ip, hx string
	mac    string // lowercase, bytes joined by "-"; "" when not known
}

func newMapClient(addr netip.Addr) mapClient {
	addr = addr.Unmap().WithZone("")
	raw := addr.AsSlice()
	return mapClient{v4: addr.Is4(), ip: addr.String(), hx: strings.ToUpper(hex.EncodeToString(raw))}
}

// applies reports whether a rule is for this kind of request and client:
// a rule with \m is for none whose MAC address is unknown, as a rule with
// 4 is for no IPv6 client.
func (r *remapRule) applies(op uint16, client mapClient) bool {
	return (!r.onlyRRQ || op == opRRQ) && (!r.onlyWRQ || op == opWRQ) && (!r.only4 || client.v4) && (!r.only6 || !client.v4) &&
		(!r.needsMAC || client.mac != "")
}

// mapping is what the bounds have counted of one name's way through the
// rules, and the regex engine's scratch space for it.
type mapping struct {
	rs          *remapRules
	steps, work int
	scratch     ereScratch
}

// count takes one more step, a rule tried or a repeat, and the work of
// matching s: past either bound the mapping stops.
func (mp *mapping) count(re *ere, s string) error {
	mp.steps++
	mp.work += re.cost(s)
	limit := mp.rs.steps
	if limit == 0 {
		limit = defaultMapSteps
	}
	if mp.steps > limit || mp.work > maxMapWork {
		return errMapRunaway
	}
	return nil
}

// mapName runs the rules on a requested name for an RRQ or WRQ (op) from
// client, as tftpd-hpa 6.0 does; servable tells "E" rules whether a name
// can be served (nil: never). Rules are tried from the top; a rule fires
// when its regex matches (or, with "~", does not). A firing rule replaces
// the first match ("r"; again and again with "g" and "gg"); with "E" it
// counts only when servable says the result can be served (a rewrite that
// cannot is undone); then it refuses the request ("a"), ends processing
// ("e", "E"), starts over at the first rule ("s") or goes on after its
// label ("j").
func (rs *remapRules) mapName(name string, op uint16, client mapClient, servable func(string) bool) (string, error) {
	if len(name) > maxMappedName {
		return "", errMapTooLong
	}
	cur := name
	mp := &mapping{rs: rs}
	for i := 0; i < len(rs.rules); {
		r := &rs.rules[i]
		i++
		if !r.applies(op, client) {
			continue
		}
		if err := mp.count(r.re, cur); err != nil {
			return "", err
		}
		m := r.re.match(cur, &mp.scratch)
		if (m == nil) != r.inverse {
			continue
		}
		next := cur
		if r.rewrite {
			var err error
			if next, err = mp.rewrite(r, cur, m, client); err != nil {
				return "", err
			}
		}
		if r.ifServable && (servable == nil || !servable(next)) {
			continue // as if it had not matched: the rewrite is undone
		}
		cur = next
		switch {
		case r.abort:
			if r.replacement == "" {
				return "", errMapRefused
			}
			return "", newWireError(codeAccess, "%s", r.expand(nil, cur, m, client))
		case r.exit, r.ifServable:
			return cur, nil
		case r.restart:
			i = 0
		case r.jump && r.target >= 0:
			i = r.target
		case r.jump:
			label := string(r.expand(nil, cur, m, client))
			target, ok := rs.labels[label]
			if !ok {
				return "", fmt.Errorf("%s:%d: no label %q: %w", rs.file, r.line, logText(label), errMapNoLabel)
			}
			i = target
		}
	}
	return cur, nil
}

// rewrite replaces the match m in s, and with "g" or "gg" repeats.
// "g" searches the whole result again each time, as tftpd-hpa does; "gg"
// searches the rest after the replacement (as REG_NOTBOL, tftpd-hpa 6.0's
// way), and where that finds an empty match right at the end of the
// previous one, keeps the byte there and searches on after it, as sed's
// s///g does: tftpd-hpa would replace the empty match again and again
// until --map-steps stopped it.
func (mp *mapping) rewrite(r *remapRule, s string, m []int, client mapClient) (string, error) {
	off, prevEnd := 0, -1 // where the search ran, where the last replacement ended
	for {
		if r.sedGlobal && m[0] == m[1] && off+m[0] == prevEnd {
			off += m[0] + 1 // an empty match next to the last: skip a byte
		} else {
			next := append(make([]byte, 0, len(s)+len(r.replacement)), s[:off+m[0]]...)
			next = r.expand(next, s[off:], m, client)
			prevEnd = len(next)
			next = append(next, s[off+m[1]:]...)
			if len(next) > maxMappedName {
				return "", errMapTooLong
			}
			s = string(next)
			off = 0
			if r.sedGlobal {
				off = prevEnd
			}
		}
		if !r.global || off > len(s) || r.sedGlobal && off == len(s) && prevEnd == len(s) {
			return s, nil
		}
		rest := s[off:]
		if off > 0 {
			m = r.re.matchNotBOL(rest, &mp.scratch)
		} else {
			m = r.re.match(rest, &mp.scratch)
		}
		if m == nil {
			return s, nil
		}
		if err := mp.count(r.re, rest); err != nil {
			return "", err
		}
	}
}

// expand appends the rule's replacement with its escapes expanded: \0 to \9
// are the match m in s and its groups (empty without a match), \i and \x
// the client's address, \m its MAC address. \U and \L upper- and lowercase ASCII letters until
// \E, in literal text, groups and addresses alike; any other escaped byte
// stands for itself.
func (r *remapRule) expand(dst []byte, s string, m []int, client mapClient) []byte {
	var fold byte // 'U', 'L' or 0
	put := func(text string) {
		for i := 0; i < len(text); i++ {
			c := text[i]
			switch {
			case fold == 'U' && c >= 'a' && c <= 'z':
				c -= 'a' - 'A'
			case fold == 'L' && c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			}
			dst = append(dst, c)
		}
	}
	p := r.replacement
	for i := 0; i < len(p); i++ {
		if p[i] != '\\' || i+1 == len(p) {
			put(p[i : i+1])
			continue
		}
		i++
		switch e := p[i]; {
		case e >= '0' && e <= '9':
			if g := int(e-'0') * 2; g+1 < len(m) && m[g] >= 0 {
				put(s[m[g]:m[g+1]])
			}
		case e == 'U' || e == 'L':
			fold = e
		case e == 'E':
			fold = 0
		case e == 'i':
			put(client.ip)
		case e == 'x':
			put(client.hx)
		case e == 'm':
			put(client.mac)
		default:
			put(p[i : i+1])
		}
	}
	return dst
}

// remapTable holds the rules in force: those of --map-file, replaced whole
// when SIGHUP rereads it, so a mapping in progress keeps the rules it began
// with.
type remapTable struct {
	file  string // "" without --map-file
	steps int    // --map-steps
	rules atomic.Pointer[remapRules]
	log   *slog.Logger
}

func newRemapTable(file string, steps int, rules *remapRules, log *slog.Logger) *remapTable {
	t := &remapTable{file: file, steps: steps, log: log}
	if rules != nil {
		rules.steps = steps
	}
	t.rules.Store(rules)
	return t
}

// mapRequest is the name a request is served under: the name the client
// sent, after the rules in force, if any. It runs once per request, for
// reads and writes alike, before the name is cleaned; mac is asked for the
// client's MAC address ("aa:bb:...", "" unknown) only when a rule has \m;
// servable tells "E" rules whether a name can be served; log is the
// request's.
func (t *remapTable) mapRequest(name string, op uint16, client netip.Addr, mac func() string, servable func(string) bool,
	log *slog.Logger) (string, error) {
	rules := t.rules.Load()
	if rules == nil {
		return name, nil
	}
	mc := newMapClient(client)
	if rules.needsMAC {
		mc.mac = strings.ReplaceAll(mac(), ":", "-")
	}
	mapped, err := rules.mapName(name, op, mc, servable)
	switch {
	case errors.Is(err, errMapRunaway), errors.Is(err, errMapTooLong), errors.Is(err, errMapNoLabel):
		log.Warn("file name mapping stopped", "map_file", rules.file, "map_steps", rules.steps, "err", err)
	case err != nil:
		log.Debug("request refused by a mapping rule", "map_file", rules.file, "err", err)
	case mapped == "":
		// tftpd-hpa opens the empty name, which does not exist.
		log.Debug("file name mapped to nothing", "requested", logText(name))
		return "", errNotFound
	case mapped != name:
		log.Debug("file name mapped", "requested", logText(name), "mapped", logText(mapped))
	}
	return mapped, err
}

// reload reads the --map-file again (on SIGHUP). A file that does not
// parse leaves the rules in force as they are.
func (t *remapTable) reload() error {
	if t.file == "" {
		return errNoRulesFile
	}
	rules, err := loadRemapRules(t.file)
	if err != nil {
		t.log.Error("map file not reloaded, the previous rules stay", "err", err)
		return err
	}
	rules.steps = t.steps
	t.rules.Store(rules)
	t.log.Info("map file reloaded", "map_file", rules.file, "rules", len(rules.rules))
	return nil
}
