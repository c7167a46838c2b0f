// File name remapping (--map-file): tftpd-hpa's rules format, read and
// applied here. A rules file is a list of rules tried from the top on the
// name a client sent; each rule has operation letters, an egrep-style regex
// and an optional replacement with \-escapes. What the rules produce is an
// ordinary requested name afterwards: it is cleaned and resolved below the
// root like any other, so no rule can lead outside it.
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
	// maxMapSteps bounds the regex evaluations of one mapping: every rule
	// tried and every repeat of a "g" rule counts, as in current tftp-hpa,
	// whose default bound this is. A rule set that restarts ("s") or repeats
	// forever ends here instead of holding a session.
	maxMapSteps = 4096
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

// remapRule is one line of a rules file.
type remapRule struct {
	line        int
	re          *ere
	replacement string
	rewrite     bool   // r: replace the match with the replacement
	global      bool   // g: repeat the rewrite while the regex matches
	exit        bool   // e: a match ends processing
	restart     bool   // s: a match starts over at the first rule
	abort       bool   // a: a match refuses the request (ERROR 2)
	inverse     bool   // ~: the rule fires when the regex does not match
	onlyOp      uint16 // G or P: opRRQ or opWRQ only; 0 for both
	only4       bool   // 4: IPv4 clients only
	only6       bool   // 6: IPv6 clients only
}

// remapRules is a parsed rules file.
type remapRules struct {
	file  string
	rules []remapRule
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
// first field is empty holds no rule. A fourth field is ignored, as there.
func parseRemapRules(file, text string) (*remapRules, error) {
	rs := &remapRules{file: file}
	for i, line := range strings.Split(text, "\n") {
		fields := splitRuleFields(line)
		if len(fields) == 0 {
			continue
		}
		r, why := parseRule(fields)
		if why != "" {
			return nil, &remapFileError{file: file, line: i + 1, why: why}
		}
		r.line = i + 1
		rs.rules = append(rs.rules, r)
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

func parseRule(fields []string) (remapRule, string) {
	var r remapRule
	foldCase := false
	for i := 0; i < len(fields[0]); i++ {
		switch c := fields[0][i]; c {
		case 'r':
			r.rewrite = true
		case 'g':
			r.global = true
		case 'i':
			foldCase = true
		case 'e':
			r.exit = true
		case 's':
			r.restart = true
		case 'a':
			r.abort = true
		case '~':
			r.inverse = true
		case 'G':
			r.onlyOp = opRRQ // the last of G and P wins, as in tftpd-hpa
		case 'P':
			r.onlyOp = opWRQ
		case '4':
			r.only4 = true
		case '6':
			r.only6 = true
		default:
			return r, fmt.Sprintf("unknown operation %q in %q (known: r g i e s a G P 4 6 ~)", c, clip(fields[0]))
		}
	}
	r.global = r.global && r.rewrite
	if r.rewrite && r.inverse {
		return r, "operations r and ~ cannot be combined: an inverted rule has no match to replace"
	}
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
	return r, ""
}

// mapClient is what the replacement escapes \i and \x stand for.
type mapClient struct {
	v4     bool
	ip, hx string
}

func newMapClient(addr netip.Addr) mapClient {
	addr = addr.Unmap().WithZone("")
	raw := addr.AsSlice()
	return mapClient{v4: addr.Is4(), ip: addr.String(), hx: strings.ToUpper(hex.EncodeToString(raw))}
}

// applies reports whether a rule is for this kind of request and client.
func (r *remapRule) applies(op uint16, client mapClient) bool {
	return (r.onlyOp == 0 || r.onlyOp == op) && (!r.only4 || client.v4) && (!r.only6 || !client.v4)
}

// mapName runs the rules on a requested name for an RRQ or WRQ (op) from
// client. Rules are tried from the top; a rule fires when its regex matches
// (or, with "~", does not). A firing rule refuses the request ("a"),
// replaces the first match ("r", again and again with "g"), then ends
// processing ("e") or starts over from the first rule ("s").
func (rs *remapRules) mapName(name string, op uint16, client mapClient) (string, error) {
	if len(name) > maxMappedName {
		return "", errMapTooLong
	}
	cur := name
	steps, work := 0, 0
	var scratch ereScratch
	for i := 0; i < len(rs.rules); i++ {
		r := &rs.rules[i]
		if !r.applies(op, client) {
			continue
		}
		fired := false
		for {
			steps++
			work += r.re.cost(cur)
			if steps > maxMapSteps || work > maxMapWork {
				return "", errMapRunaway
			}
			m := r.re.match(cur, &scratch)
			if (m == nil) != r.inverse {
				break
			}
			fired = true
			if r.abort {
				if r.replacement == "" {
					return "", errMapRefused
				}
				return "", newWireError(codeAccess, "%s", r.expand(nil, cur, m, client))
			}
			if r.rewrite {
				next := append(make([]byte, 0, len(cur)+len(r.replacement)), cur[:m[0]]...)
				next = append(r.expand(next, cur, m, client), cur[m[1]:]...)
				if len(next) > maxMappedName {
					return "", errMapTooLong
				}
				cur = string(next)
			}
			if !r.global {
				break
			}
		}
		switch {
		case !fired:
		case r.exit:
			return cur, nil
		case r.restart:
			i = -1
		}
	}
	return cur, nil
}

// expand appends the rule's replacement with its escapes expanded: \0 to \9
// are the match m in s and its groups (empty without a match), \i and \x
// the client's address. \U and \L upper- and lowercase ASCII letters until
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
	rules atomic.Pointer[remapRules]
	log   *slog.Logger
}

func newRemapTable(file string, rules *remapRules, log *slog.Logger) *remapTable {
	t := &remapTable{file: file, log: log}
	t.rules.Store(rules)
	return t
}

// mapRequest is the name a request is served under: the name the client
// sent, after the rules in force, if any. It runs once per request, for
// reads and writes alike, before the name is cleaned; log is the request's.
func (t *remapTable) mapRequest(name string, op uint16, client netip.Addr, log *slog.Logger) (string, error) {
	rules := t.rules.Load()
	if rules == nil {
		return name, nil
	}
	mapped, err := rules.mapName(name, op, newMapClient(client))
	switch {
	case errors.Is(err, errMapRunaway), errors.Is(err, errMapTooLong):
		log.Warn("file name mapping stopped", "map_file", rules.file, "err", err)
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
	t.rules.Store(rules)
	t.log.Info("map file reloaded", "map_file", rules.file, "rules", len(rules.rules))
	return nil
}
