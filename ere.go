// POSIX extended regular expressions, as glibc's regcomp and regexec read
// them for tftpd-hpa's rules in the C locale: bytes, not characters;
// leftmost-longest matches; "^" and "$" only at the ends of the name; "."
// and negated lists match any byte. Go's regexp would cost the router
// builds about 320 KB (its Unicode tables), so this file has a small engine
// of its own: a parser, a compiler to a few instructions, and a
// backtracking matcher that never visits the same instruction at the same
// position twice, so a match costs at most instructions × name length.
package main

import (
	"strconv"
	"strings"
)

// maxEREInsts bounds a compiled regex (a{100}{100} would be 10000). The
// rules of a real map file compile to a few dozen.
const maxEREInsts = 1000

// maxERERepeat is the largest count in a {m,n} interval.
const maxERERepeat = 255

type ereOp uint8

const (
	ereByte  ereOp = iota // the byte c
	ereSet                // a byte in set
	ereAny                // any byte
	ereSplit              // go on at x, later at y
	ereJmp                // go on at x
	ereSave               // note the position in capture slot x
	ereBegin              // the start of the name
	ereEnd                // the end of the name
	ereMatch
)

type ereInst struct {
	op   ereOp
	c    byte
	set  *byteSet
	x, y int
}

// byteSet is a set of bytes, one bit each.
type byteSet [4]uint64

func (s *byteSet) add(c byte)      { s[c>>6] |= 1 << (c & 63) }
func (s *byteSet) has(c byte) bool { return s[c>>6]&(1<<(c&63)) != 0 }
func (s *byteSet) addRange(lo, hi byte) {
	for c := int(lo); c <= int(hi); c++ {
		s.add(byte(c))
	}
}

// foldASCII adds the other case of every ASCII letter in the set, as
// REG_ICASE does in the C locale.
func (s *byteSet) foldASCII() {
	for c := byte('A'); c <= 'Z'; c++ {
		if s.has(c) || s.has(c+'a'-'A') {
			s.add(c)
			s.add(c + 'a' - 'A')
		}
	}
}

// ere is a compiled regex.
type ere struct {
	prog     []ereInst
	ncap     int  // capture slots: 2 × (groups + 1)
	anchored bool // begins with "^": only a match at 0 is possible
}

// ereNode is the parsed form.
type ereNode struct {
	kind     ereOp // ereByte, ereSet, ereAny, ereBegin, ereEnd, or one of the below
	c        byte
	set      *byteSet
	subs     []*ereNode
	min, max int // repetition; max -1 for no limit
	group    int
}

const (
	ereCat ereOp = 100 + iota
	ereAlt
	ereRepeat
	ereGroup
)

type ereParser struct {
	p        string
	i        int
	foldCase bool
	groups   int
}

// compileRuleRegex compiles a rule's regex, or says why it cannot.
func compileRuleRegex(pattern string, foldCase bool) (*ere, string) {
	ps := &ereParser{p: pattern, foldCase: foldCase}
	n, why := ps.alternation(0)
	if why == "" && ps.i < len(ps.p) {
		why = "unmatched )"
	}
	if why != "" {
		return nil, "bad regex " + clip(pattern) + ": " + why
	}
	re := &ere{ncap: 2 * (ps.groups + 1)}
	c := &ereCompiler{re: re}
	c.emit(ereInst{op: ereSave, x: 0})
	c.node(n)
	c.emit(ereInst{op: ereSave, x: 1})
	c.emit(ereInst{op: ereMatch})
	if c.tooLarge {
		return nil, "regex " + clip(pattern) + " is too large (over " + strconv.Itoa(maxEREInsts) + " instructions)"
	}
	re.anchored = len(re.prog) > 1 && re.prog[1].op == ereBegin
	return re, ""
}

// clip shortens what a message quotes from a rules file.
func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func (ps *ereParser) alternation(depth int) (*ereNode, string) {
	if depth > 100 {
		return nil, "groups nested too deeply"
	}
	var branches []*ereNode
	for {
		b, why := ps.branch(depth)
		if why != "" {
			return nil, why
		}
		branches = append(branches, b)
		if ps.i == len(ps.p) || ps.p[ps.i] != '|' {
			break
		}
		ps.i++
	}
	if len(branches) == 1 {
		return branches[0], ""
	}
	return &ereNode{kind: ereAlt, subs: branches}, ""
}

func (ps *ereParser) branch(depth int) (*ereNode, string) {
	cat := &ereNode{kind: ereCat}
	for ps.i < len(ps.p) && ps.p[ps.i] != '|' && ps.p[ps.i] != ')' {
		atom, why := ps.atom(depth)
		if why != "" {
			return nil, why
		}
		for ps.i < len(ps.p) {
			min, max, width := ps.repetition()
			if width == 0 {
				break
			}
			if min > maxERERepeat || max > maxERERepeat {
				return nil, "repetition count over " + strconv.Itoa(maxERERepeat)
			}
			if max >= 0 && max < min {
				return nil, "invalid repetition count " + ps.p[ps.i:ps.i+width]
			}
			ps.i += width
			atom = &ereNode{kind: ereRepeat, subs: []*ereNode{atom}, min: min, max: max}
		}
		cat.subs = append(cat.subs, atom)
	}
	return cat, ""
}

// repetition reads "*", "+", "?" or a well-formed interval "{m}", "{m,}",
// "{m,n}" at the parser's position; width 0 when there is none ("{" that
// opens no interval is an ordinary byte, as in glibc and Go).
func (ps *ereParser) repetition() (min, max, width int) {
	switch ps.p[ps.i] {
	case '*':
		return 0, -1, 1
	case '+':
		return 1, -1, 1
	case '?':
		return 0, 1, 1
	case '{':
		end := strings.IndexByte(ps.p[ps.i:], '}')
		if end < 0 {
			return 0, 0, 0
		}
		lo, hi, comma := strings.Cut(ps.p[ps.i+1:ps.i+end], ",")
		m, err := strconv.Atoi(lo)
		if err != nil || m < 0 || lo[0] == '+' {
			return 0, 0, 0
		}
		n := m
		if comma {
			n = -1
			if hi != "" {
				if n, err = strconv.Atoi(hi); err != nil || n < 0 || hi[0] == '+' {
					return 0, 0, 0
				}
			}
		}
		return m, n, end + 1
	}
	return 0, 0, 0
}

func (ps *ereParser) atom(depth int) (*ereNode, string) {
	c := ps.p[ps.i]
	ps.i++
	switch c {
	case '(':
		ps.groups++
		group := ps.groups
		sub, why := ps.alternation(depth + 1)
		if why != "" {
			return nil, why
		}
		if ps.i == len(ps.p) {
			return nil, "unmatched ("
		}
		ps.i++
		return &ereNode{kind: ereGroup, subs: []*ereNode{sub}, group: group}, ""
	case '*', '+', '?':
		return nil, "repetition operator " + string(c) + " with nothing before it"
	case '{':
		if _, _, width := ps.repetition0(); width > 0 {
			return nil, "repetition with nothing before it"
		}
		return ps.literal(c), ""
	case '.':
		return &ereNode{kind: ereAny}, ""
	case '^':
		return &ereNode{kind: ereBegin}, ""
	case '$':
		return &ereNode{kind: ereEnd}, ""
	case '[':
		return ps.bracket()
	case '\\':
		return ps.escape()
	}
	return ps.literal(c), ""
}

// repetition0 is repetition for a "{" already consumed.
func (ps *ereParser) repetition0() (int, int, int) {
	ps.i--
	min, max, width := ps.repetition()
	ps.i++
	return min, max, width
}

func (ps *ereParser) literal(c byte) *ereNode {
	if ps.foldCase && isASCIILetter(c) {
		set := &byteSet{}
		set.add(c)
		set.foldASCII()
		return &ereNode{kind: ereSet, set: set}
	}
	return &ereNode{kind: ereByte, c: c}
}

// isRuleSpace is C's isspace in the C locale: [:space:] here, and what
// tftpd-hpa splits a rule's fields with (remap.go).
func isRuleSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isASCIIAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isASCIILetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// escape reads what follows a backslash outside a bracket expression.
// GNU's \w \W \s \S \` \' are supported; back-references and word
// boundaries have no place in this engine and are refused; before any
// other byte the backslash only makes it ordinary, as in glibc.
func (ps *ereParser) escape() (*ereNode, string) {
	if ps.i == len(ps.p) {
		return nil, "ends with a lone backslash"
	}
	c := ps.p[ps.i]
	ps.i++
	switch {
	case c >= '1' && c <= '9':
		return nil, "back-reference \\" + string(c) + " inside the regex is not supported"
	case c == 'b' || c == 'B' || c == '<' || c == '>':
		return nil, "GNU word-boundary operator \\" + string(c) + " is not supported"
	case c == '`':
		return &ereNode{kind: ereBegin}, ""
	case c == '\'':
		return &ereNode{kind: ereEnd}, ""
	case c == 'w' || c == 'W' || c == 's' || c == 'S':
		set := &byteSet{}
		class := "alnum"
		if c == 's' || c == 'S' {
			class = "space"
		} else {
			set.add('_')
		}
		addClass(set, class)
		if c == 'W' || c == 'S' {
			negate(set)
		}
		return &ereNode{kind: ereSet, set: set}, ""
	}
	return ps.literal(c), ""
}

func negate(s *byteSet) {
	for i := range s {
		s[i] = ^s[i]
	}
}

// addClass adds a character class of the C locale; false for an unknown name.
func addClass(s *byteSet, name string) bool {
	for c := 0; c < 256; c++ {
		b := byte(c)
		var in bool
		switch name {
		case "alpha":
			in = isASCIILetter(b)
		case "digit":
			in = b >= '0' && b <= '9'
		case "alnum":
			in = isASCIIAlnum(b)
		case "upper":
			in = b >= 'A' && b <= 'Z'
		case "lower":
			in = b >= 'a' && b <= 'z'
		case "space":
			in = isRuleSpace(b)
		case "blank":
			in = b == ' ' || b == '\t'
		case "punct":
			in = b > ' ' && b < 0x7f && !isASCIIAlnum(b)
		case "print":
			in = b >= ' ' && b < 0x7f
		case "graph":
			in = b > ' ' && b < 0x7f
		case "cntrl":
			in = b < ' ' || b == 0x7f
		case "xdigit":
			in = b >= '0' && b <= '9' || b >= 'a' && b <= 'f' || b >= 'A' && b <= 'F'
		default:
			return false
		}
		if in {
			s.add(b)
		}
	}
	return true
}

// bracket reads a bracket expression after its "[". A backslash in it is
// an ordinary byte, as POSIX has it.
func (ps *ereParser) bracket() (*ereNode, string) {
	set := &byteSet{}
	negated := false
	if ps.i < len(ps.p) && ps.p[ps.i] == '^' {
		negated = true
		ps.i++
	}
	first := true
	for {
		if ps.i == len(ps.p) {
			return nil, "unterminated ["
		}
		c := ps.p[ps.i]
		if c == ']' && !first {
			ps.i++
			break
		}
		first = false
		lo, why := ps.bracketElement(set)
		if why != "" {
			return nil, why
		}
		if lo < 0 {
			continue // a class
		}
		if ps.i+1 < len(ps.p) && ps.p[ps.i] == '-' && ps.p[ps.i+1] != ']' {
			ps.i++
			hi, why := ps.bracketElement(set)
			if why != "" {
				return nil, why
			}
			if hi < 0 || hi < lo {
				return nil, "invalid range end in ["
			}
			set.addRange(byte(lo), byte(hi))
			continue
		}
		set.add(byte(lo))
	}
	if ps.foldCase {
		set.foldASCII()
	}
	if negated {
		negate(set)
	}
	return &ereNode{kind: ereSet, set: set}, ""
}

// bracketElement reads one byte of a bracket expression, or a [:class:]
// (added to set, returning -1); [=c=] and [.c.] of one byte are that byte.
func (ps *ereParser) bracketElement(set *byteSet) (int, string) {
	c := ps.p[ps.i]
	if c == '[' && ps.i+1 < len(ps.p) && (ps.p[ps.i+1] == ':' || ps.p[ps.i+1] == '=' || ps.p[ps.i+1] == '.') {
		delim := ps.p[ps.i+1]
		end := strings.Index(ps.p[ps.i+2:], string(delim)+"]")
		if end < 0 {
			return 0, "unterminated [" + string(delim) + " in ["
		}
		name := ps.p[ps.i+2 : ps.i+2+end]
		ps.i += 2 + end + 2
		if delim == ':' {
			if !addClass(set, name) {
				return 0, "unknown character class [:" + clip(name) + ":]"
			}
			return -1, ""
		}
		if len(name) != 1 {
			return 0, "collating element [" + string(delim) + clip(name) + string(delim) + "] is not supported"
		}
		return int(name[0]), ""
	}
	ps.i++
	return int(c), ""
}

type ereCompiler struct {
	re       *ere
	tooLarge bool
}

func (c *ereCompiler) emit(in ereInst) int {
	if len(c.re.prog) >= maxEREInsts {
		c.tooLarge = true
		return len(c.re.prog) - 1
	}
	c.re.prog = append(c.re.prog, in)
	return len(c.re.prog) - 1
}

func (c *ereCompiler) node(n *ereNode) {
	if c.tooLarge {
		return
	}
	switch n.kind {
	case ereByte, ereSet, ereAny, ereBegin, ereEnd:
		c.emit(ereInst{op: n.kind, c: n.c, set: n.set})
	case ereCat:
		for _, s := range n.subs {
			c.node(s)
		}
	case ereGroup:
		c.emit(ereInst{op: ereSave, x: 2 * n.group})
		c.node(n.subs[0])
		c.emit(ereInst{op: ereSave, x: 2*n.group + 1})
	case ereAlt:
		// split L1, next; L1: a; jmp end; next: split L2, ... ; last
		var jumps []int
		for i, s := range n.subs {
			if i == len(n.subs)-1 {
				c.node(s)
				break
			}
			split := c.emit(ereInst{op: ereSplit})
			c.setSplit(split, len(c.re.prog), -1)
			c.node(s)
			jumps = append(jumps, c.emit(ereInst{op: ereJmp}))
			c.setSplit(split, -1, len(c.re.prog))
		}
		for _, j := range jumps {
			c.setJump(j, len(c.re.prog))
		}
	case ereRepeat:
		sub := n.subs[0]
		for range n.min {
			c.node(sub)
		}
		if n.max < 0 {
			// loop: split body, out; body; jmp loop
			loop := c.emit(ereInst{op: ereSplit})
			c.setSplit(loop, len(c.re.prog), -1)
			c.node(sub)
			c.setJump(c.emit(ereInst{op: ereJmp}), loop)
			c.setSplit(loop, -1, len(c.re.prog))
			return
		}
		// Each optional copy: split body, out (greedy: the body first).
		var splits []int
		for range n.max - n.min {
			s := c.emit(ereInst{op: ereSplit})
			c.setSplit(s, len(c.re.prog), -1)
			splits = append(splits, s)
			c.node(sub)
		}
		for _, s := range splits {
			c.setSplit(s, -1, len(c.re.prog))
		}
	}
}

func (c *ereCompiler) setSplit(at, x, y int) {
	if c.tooLarge {
		return
	}
	if x >= 0 {
		c.re.prog[at].x = x
	}
	if y >= 0 {
		c.re.prog[at].y = y
	}
}

func (c *ereCompiler) setJump(at, x int) {
	if !c.tooLarge {
		c.re.prog[at].x = x
	}
}

// ereScratch is a matcher's memory, reused from one match to the next.
type ereScratch struct {
	visited []uint64
	caps    []int
	best    []int
	jobs    []ereJob
}

// ereJob is a branch still to try, or (restore) a capture slot to put back.
type ereJob struct {
	pc, pos int
	restore bool
}

// cost is the work bound of one match on s: each instruction at each
// position at most once.
func (re *ere) cost(s string) int { return len(re.prog) * (len(s) + 1) }

// match finds the leftmost-longest match of re in s, and among matches of
// that extent the one a backtracking search finds first, as glibc's
// regexec reports the groups. It returns the capture positions (pairs,
// -1 for a group that took no part) or nil.
func (re *ere) match(s string, sc *ereScratch) []int {
	width := len(s) + 1
	bits := (len(re.prog)*width + 63) / 64
	if cap(sc.visited) < bits {
		sc.visited = make([]uint64, bits)
	}
	sc.visited = sc.visited[:bits]
	clear(sc.visited)
	sc.caps = fill(sc.caps, re.ncap)
	sc.best = fill(sc.best, re.ncap)
	last := len(s)
	if re.anchored {
		last = 0
	}
	for start := 0; start <= last; start++ {
		if re.search(s, start, sc) {
			return sc.best
		}
	}
	return nil
}

func fill(b []int, n int) []int {
	if cap(b) < n {
		b = make([]int, n)
	}
	b = b[:n]
	for i := range b {
		b[i] = -1
	}
	return b
}

// search explores every path from start, keeping the longest match; a
// path reaching an instruction at a position already visited is dropped,
// since the earlier visit came from a path of higher priority.
func (re *ere) search(s string, start int, sc *ereScratch) bool {
	width := len(s) + 1
	found := false
	sc.jobs = append(sc.jobs[:0], ereJob{pc: 0, pos: start})
	for len(sc.jobs) > 0 {
		j := sc.jobs[len(sc.jobs)-1]
		sc.jobs = sc.jobs[:len(sc.jobs)-1]
		if j.restore {
			sc.caps[j.pc] = j.pos
			continue
		}
		pc, pos := j.pc, j.pos
	thread:
		for {
			bit := pc*width + pos
			if sc.visited[bit/64]&(1<<(bit%64)) != 0 {
				break
			}
			sc.visited[bit/64] |= 1 << (bit % 64)
			in := &re.prog[pc]
			switch in.op {
			case ereByte:
				if pos == len(s) || s[pos] != in.c {
					break thread
				}
				pc, pos = pc+1, pos+1
			case ereSet:
				if pos == len(s) || !in.set.has(s[pos]) {
					break thread
				}
				pc, pos = pc+1, pos+1
			case ereAny:
				if pos == len(s) {
					break thread
				}
				pc, pos = pc+1, pos+1
			case ereSplit:
				sc.jobs = append(sc.jobs, ereJob{pc: in.y, pos: pos})
				pc = in.x
			case ereJmp:
				pc = in.x
			case ereSave:
				sc.jobs = append(sc.jobs, ereJob{pc: in.x, pos: sc.caps[in.x], restore: true})
				sc.caps[in.x] = pos
				pc++
			case ereBegin:
				if pos != 0 {
					break thread
				}
				pc++
			case ereEnd:
				if pos != len(s) {
					break thread
				}
				pc++
			case ereMatch:
				if !found || pos > sc.best[1] {
					found = true
					copy(sc.best, sc.caps)
					sc.best[1] = pos
				}
				if pos == len(s) {
					return true // nothing can be longer
				}
				break thread
			}
		}
	}
	return found
}
