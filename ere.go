// POSIX extended regular expressions exactly as tftpd-hpa gets them from
// glibc (2.36): regcomp(REG_EXTENDED, REG_ICASE for an "i" rule) and
// regexec with 10 groups, in the C locale, so bytes, not characters. Go's
// regexp would cost the router builds about 320 KB (its Unicode tables)
// and reads groups its own way; a rule's groups feed its replacement, so
// this file is glibc's engine in miniature. Its choices, quirks included,
// follow from how it numbers NFA nodes, so the same steps are taken here:
//
//   - parse into glibc's tree: "{m,n}" written out as copies, "?" as an
//     alternative with nothing, an empty branch or group kept as nothing;
//   - number the nodes in glibc's order (postorder, groups as open/close
//     nodes), and let each anchor clone the nodes it leads to, so that
//     they carry its condition (calc_eclosure, duplicate_node_closure);
//   - search: the leftmost start with a match, and its longest end, state
//     set by state set (check_matching);
//   - with groups, keep of those states what leads to that end
//     (sift_states_backward), then walk them from the first node taking,
//     at each fork, the lowest-numbered way still open (set_regs).
//
// Each phase handles each node at most once per name position (the walk
// at most three times), a state's bitset at a time, so a match costs a
// small multiple of nodes × (name length + 1), the multiple growing with
// nodes/64 for a regex of hundreds, and times the name length again for
// the rare regex where glibc drops a start and tries the next (see cost).
// The deliberate differences from glibc are in README.md ("Differences
// from tftpd-hpa").
package main

import (
	"iter"
	"math/bits"
	"slices"
	"strconv"
)

// maxERENodes bounds a compiled regex (a{100}{100} would be 10000 nodes).
// The rules of a real map file compile to a few dozen.
const maxERENodes = 1000

// maxEREClosureSteps bounds the work glibc's regcomp would spend on the
// ε-closures (see cloneAfterAnchors): near it glibc takes a second, far
// beyond (0{,7}{,7}{,7}{,}) over 20 s, where a real rule needs about one step
// per node.
const maxEREClosureSteps = 1 << 20

// maxERERepeat is the largest count in a {m,n} interval (glibc: 32767).
const maxERERepeat = 255

// byteSet is a set of bytes, one bit each.
type byteSet [4]uint64

func (s *byteSet) add(c byte)      { s[c>>6] |= 1 << (c & 63) }
func (s *byteSet) has(c byte) bool { return s[c>>6]&(1<<(c&63)) != 0 }

func negate(s *byteSet) {
	for i := range s {
		s[i] = ^s[i]
	}
}

func upperASCII(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
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

// Position conditions, glibc's constraint bits that a rule can reach.
const (
	ereAfterNewline   uint8 = 1 << iota // "^": glibc PREV_NEWLINE
	ereBeforeNewline                    // "$": NEXT_NEWLINE
	ereAtStart                          // "\`": PREV_BEGBUF
	ereAtEnd                            // "\'": NEXT_ENDBUF
	ereNextConditions = ereBeforeNewline | ereAtEnd
)

// What a position offers those conditions (glibc's contexts).
const (
	ereCtxNewline uint8 = 1 << iota
	ereCtxStart
	ereCtxEnd
	// erePrevContexts counts what a position can offer the conditions on
	// what precedes: each mix of ereCtxNewline and ereCtxStart, which
	// indexes ere.kept.
	erePrevContexts = (ereCtxNewline | ereCtxStart) + 1
)

// prevHolds tells whether a node's conditions on what precedes hold in ctx.
func prevHolds(cond, ctx uint8) bool {
	return (cond&ereAfterNewline == 0 || ctx&ereCtxNewline != 0) && (cond&ereAtStart == 0 || ctx&ereCtxStart != 0)
}

// nextHolds tells whether a node's conditions on what follows hold in ctx.
func nextHolds(cond, ctx uint8) bool {
	return (cond&ereBeforeNewline == 0 || ctx&ereCtxNewline != 0) && (cond&ereAtEnd == 0 || ctx&ereCtxEnd != 0)
}

type ereOp uint8

const (
	ereConsume ereOp = iota // a byte of set, then next
	ereEnd                  // the end of the regex: a match
	ereOpen                 // a group starts
	ereClose                // a group ends
	ereAnchor               // a position condition
	ereAlt                  // alternatives
	ereStar                 // a loop: its body, or what follows
	ereCat                  // (tree only) left, then right
	ereGroup                // (tree only) a group around left
)

// ereTree is glibc's parse tree (bin_tree_t); nil stands for nothing.
type ereTree struct {
	op          ereOp
	set         *byteSet
	cond        uint8
	group       int
	optional    bool // a group under ?, * or {0,n} (glibc's opt_subexp)
	copied      bool // made by writing out {m,n} (glibc's "duplicated")
	left, right *ereTree
	first, last int // numbered NFA nodes: the first; a group's close
}

// ereNode is an NFA node (glibc's re_token_t with its nexts and edests).
type ereNode struct {
	op       ereOp
	cond     uint8
	copied   bool // glibc's "duplicated": a {m,n} copy or an anchor's clone
	optional bool
	group    int
	set      byteSet // ereConsume: the bytes it takes (inline: read for every byte)
	next     int     // ereConsume: the node after it
	edests   [2]int  // ε-moves, ascending; -1 where there is none
	orig     int     // a clone: the node it copies
}

// ere is a compiled regex.
type ere struct {
	nodes     []ereNode
	init      int      // the first node (glibc's init_node)
	nmatch    int      // the match and the groups regexec reports: at most 10
	subexp    []int    // group i reports what group subexp[i] matched
	plural    bool     // some fork (| ? * {m,n}): states are sifted for groups
	restarts  bool     // a node its condition can leave out leads on to one without
	words     int      // a state's bitset: this many words
	ahead     []uint64 // ahead[x*words:]: what node x leads to by ε-moves, x too
	behind    []uint64 // behind[x*words:]: what leads to x by ε-moves, x too
	kept      []uint64 // kept[ctx*words:]: the nodes a state keeps in context ctx (see keptIn)
	takers    []uint64 // the nodes that can consume a byte
	ends      []uint64 // ends[i*words:]: the end nodes that hold inside the name (0), at its end (1)
	firstByte byteSet  // bytes a match starting after the name's start can begin with
	canBeNull bool     // a match can be empty even there
}

// ereErrorKind sorts the reasons a regex is refused: glibc refuses it too,
// or r-tftpd refuses on purpose what glibc would accept.
type ereErrorKind uint8

const (
	ereSyntax         ereErrorKind = iota // glibc's regcomp fails too
	ereBackReference                      // \1 to \9 inside the regex
	ereWordBoundary                       // GNU's \b \B \< \>
	ereCountOver255                       // a {m,n} count over maxERERepeat
	ereTooLarge                           // over maxERENodes nodes or maxEREClosureSteps
	ereUnmatchedClose                     // a ")" with no "(": a literal to glibc
)

type ereError struct {
	kind ereErrorKind
	why  string
}

func syntaxError(why string) *ereError { return &ereError{ereSyntax, why} }

var errERETooLarge = &ereError{ereTooLarge, "too large"}

type ereTokenKind uint8

const (
	tokEnd           ereTokenKind = iota
	tokByte                       // c
	tokLoneBackslash              // "\" ending the regex
	tokAlt                        // |
	tokStar                       // *
	tokPlus                       // +
	tokQuestion                   // ?
	tokOpenBrace                  // {
	tokCloseBrace                 // }
	tokOpen                       // (
	tokClose                      // )
	tokBracket                    // [
	tokAny                        // .
	tokAnchor                     // ^ $ \` \' (cond)
	tokClass                      // \w \W \s \S (c)
	tokBackReference              // \1 to \9 (c)
	tokWordBoundary               // \b \B \< \> (c)
)

type ereToken struct {
	kind ereTokenKind
	c    byte
	cond uint8
}

type ereParser struct {
	p        string
	i        int // where the next token starts
	tok      ereToken
	foldCase bool
	groups   int // as glibc's re_nsub: every "(" counts
	size     int // NFA nodes made so far, an upper bound of the result
}

// byteAt is the pattern as glibc's parser reads it: under REG_ICASE the
// regex is uppercased first, except the byte after a backslash and a
// class name, which are read as written.
func (ps *ereParser) byteAt(i int) byte {
	if ps.foldCase {
		return upperASCII(ps.p[i])
	}
	return ps.p[i]
}

// fetch reads the token at ps.i into ps.tok (glibc's peek_token for ERE).
func (ps *ereParser) fetch() {
	if ps.i == len(ps.p) {
		ps.tok = ereToken{kind: tokEnd}
		return
	}
	c := ps.byteAt(ps.i)
	ps.i++
	tok := ereToken{kind: tokByte, c: c}
	if c == '\\' {
		if ps.i == len(ps.p) {
			ps.tok = ereToken{kind: tokLoneBackslash}
			return
		}
		c = ps.p[ps.i]
		ps.i++
		tok.c = c
		switch c {
		case '1', '2', '3', '4', '5', '6', '7', '8', '9':
			tok.kind = tokBackReference
		case 'b', 'B', '<', '>':
			tok.kind = tokWordBoundary
		case 'w', 'W', 's', 'S':
			tok.kind = tokClass
		case '`':
			tok = ereToken{kind: tokAnchor, cond: ereAtStart}
		case '\'':
			tok = ereToken{kind: tokAnchor, cond: ereAtEnd}
		}
		ps.tok = tok
		return
	}
	switch c {
	case '|':
		tok.kind = tokAlt
	case '*':
		tok.kind = tokStar
	case '+':
		tok.kind = tokPlus
	case '?':
		tok.kind = tokQuestion
	case '{':
		tok.kind = tokOpenBrace
	case '}':
		tok.kind = tokCloseBrace
	case '(':
		tok.kind = tokOpen
	case ')':
		tok.kind = tokClose
	case '[':
		tok.kind = tokBracket
	case '.':
		tok.kind = tokAny
	case '^':
		tok = ereToken{kind: tokAnchor, cond: ereAfterNewline}
	case '$':
		tok = ereToken{kind: tokAnchor, cond: ereBeforeNewline}
	}
	ps.tok = tok
}

// grow counts n more nodes against the limit. The tree may shrink later
// ({0} drops its operand, a group directly in a group merges), but never
// below half of what was made.
func (ps *ereParser) grow(n int) *ereError {
	ps.size += n
	if ps.size > 2*maxERENodes {
		return errERETooLarge
	}
	return nil
}

// leaf is a node that consumes a byte of set. Under REG_ICASE glibc
// compares with the uppercased name, so the set is widened to the bytes
// whose uppercase it holds (and "\a", a lowercase letter kept as written,
// matches nothing).
func (ps *ereParser) leaf(set *byteSet) (*ereTree, *ereError) {
	if ps.foldCase {
		folded := &byteSet{}
		for c := 0; c < 256; c++ {
			if set.has(upperASCII(byte(c))) {
				folded.add(byte(c))
			}
		}
		set = folded
	}
	return &ereTree{op: ereConsume, set: set}, ps.grow(1)
}

func cat(a, b *ereTree) *ereTree {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return &ereTree{op: ereCat, left: a, right: b}
}

// alternation is glibc's parse_reg_exp: branches joined by |, an empty one
// kept as nil.
func (ps *ereParser) alternation(nest int) (*ereTree, *ereError) {
	t, err := ps.branch(nest)
	for err == nil && ps.tok.kind == tokAlt {
		ps.fetch()
		var b *ereTree
		if ps.tok.kind != tokAlt && ps.tok.kind != tokEnd && (nest == 0 || ps.tok.kind != tokClose) {
			if b, err = ps.branch(nest); err != nil {
				break
			}
		}
		t = &ereTree{op: ereAlt, left: t, right: b}
		err = ps.grow(1)
	}
	return t, err
}

func (ps *ereParser) branch(nest int) (*ereTree, *ereError) {
	t, err := ps.expression(nest)
	for err == nil && ps.tok.kind != tokAlt && ps.tok.kind != tokEnd && (nest == 0 || ps.tok.kind != tokClose) {
		var e *ereTree
		e, err = ps.expression(nest)
		t = cat(t, e)
	}
	return t, err
}

// expression is one atom and the repetitions after it (parse_expression).
func (ps *ereParser) expression(nest int) (*ereTree, *ereError) {
	var t *ereTree
	var err *ereError
	switch tok := ps.tok; tok.kind {
	case tokByte, tokCloseBrace:
		set := &byteSet{}
		set.add(tok.c)
		t, err = ps.leaf(set)
	case tokAny:
		set := &byteSet{}
		negate(set)
		set[0] &^= 1 // RE_DOT_NOT_NULL: "." matches a newline, not NUL
		t, err = ps.leaf(set)
	case tokClass:
		set := &byteSet{}
		if tok.c == 'w' || tok.c == 'W' {
			addClass(set, "alnum")
			set.add('_')
		} else {
			addClass(set, "space")
		}
		if tok.c == 'W' || tok.c == 'S' {
			negate(set)
		}
		t, err = ps.leaf(set)
	case tokOpen:
		t, err = ps.group(nest + 1)
	case tokBracket:
		t, err = ps.bracket()
	case tokAnchor:
		// glibc returns here: an anchor takes no repetition, so "^*" is
		// an error, not a repeated "^".
		ps.fetch()
		return &ereTree{op: ereAnchor, cond: tok.cond}, ps.grow(1)
	case tokStar, tokPlus, tokQuestion, tokOpenBrace:
		return nil, syntaxError("repetition operator " + string(tok.c) + " with nothing before it")
	case tokClose:
		return nil, &ereError{ereUnmatchedClose, "unmatched )"}
	case tokBackReference:
		return nil, &ereError{ereBackReference, "back-reference \\" + string(tok.c) + " inside the regex is not supported"}
	case tokWordBoundary:
		return nil, &ereError{ereWordBoundary, "GNU word-boundary operator \\" + string(tok.c) + " is not supported"}
	case tokLoneBackslash:
		return nil, syntaxError("ends with a lone backslash")
	default: // tokAlt, tokEnd: an empty branch
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ps.fetch()
	for ps.tok.kind == tokStar || ps.tok.kind == tokPlus || ps.tok.kind == tokQuestion || ps.tok.kind == tokOpenBrace {
		if t, err = ps.repeat(t); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (ps *ereParser) group(nest int) (*ereTree, *ereError) {
	if nest > maxERENodes { // every level keeps at least one node
		return nil, errERETooLarge
	}
	t := &ereTree{op: ereGroup, group: ps.groups}
	ps.groups++
	if err := ps.grow(2); err != nil {
		return nil, err
	}
	ps.fetch()
	if ps.tok.kind == tokClose {
		return t, nil
	}
	var err *ereError
	if t.left, err = ps.alternation(nest); err != nil {
		return nil, err
	}
	if ps.tok.kind != tokClose {
		return nil, syntaxError("unmatched (")
	}
	return t, nil
}

// number reads the count of an interval up to "," or "}" (fetch_number):
// -1 when there is none, -2 when it is not a number, capped at 32768.
func (ps *ereParser) number() int {
	n := -1
	for {
		ps.fetch()
		switch tok := ps.tok; {
		case tok.kind == tokEnd:
			return -2
		case tok.kind == tokCloseBrace || tok.kind == tokByte && tok.c == ',':
			return n
		case tok.kind != tokByte || tok.c < '0' || tok.c > '9' || n == -2:
			n = -2
		case n == -1:
			n = int(tok.c - '0')
		default:
			n = min(32768, n*10+int(tok.c-'0'))
		}
	}
}

// repeat applies the repetition at ps.tok to elem (parse_dup_op):
// elem{m,n} becomes m copies of elem, then n-m nested optional copies.
func (ps *ereParser) repeat(elem *ereTree) (*ereTree, *ereError) {
	lo, hi := 0, -1
	switch ps.tok.kind {
	case tokPlus:
		lo = 1
	case tokQuestion:
		hi = 1
	case tokOpenBrace:
		lo = ps.number()
		if lo == -1 {
			if ps.tok.kind != tokByte { // "{}"
				return nil, syntaxError("invalid repetition count {}")
			}
			lo = 0 // "{,n}"
		}
		hi = -2
		if lo != -2 {
			hi = lo
			if ps.tok.kind == tokByte {
				hi = ps.number()
			}
		}
		switch {
		case lo == -2 || hi == -2:
			if ps.tok.kind == tokEnd {
				return nil, syntaxError("unterminated {")
			}
			return nil, syntaxError("invalid repetition count")
		case hi != -1 && lo > hi || ps.tok.kind != tokCloseBrace:
			return nil, syntaxError("invalid repetition count")
		case lo > maxERERepeat || hi > maxERERepeat:
			return nil, &ereError{ereCountOver255, "repetition count over " + strconv.Itoa(maxERERepeat)}
		}
	}
	ps.fetch()
	if elem == nil || lo == 0 && hi == 0 {
		return nil, nil
	}
	var t, before *ereTree
	if lo > 0 {
		t = elem
		for i := 2; i <= lo; i++ {
			if elem = ps.copyTree(elem); elem == nil {
				return nil, errERETooLarge
			}
			t = cat(t, elem)
		}
		if lo == hi {
			return t, nil
		}
		if elem = ps.copyTree(elem); elem == nil {
			return nil, errERETooLarge
		}
		before = t
	}
	if elem.op == ereGroup {
		elem.optional = true
	}
	t = &ereTree{op: ereAlt, left: elem}
	if hi == -1 {
		t.op = ereStar
	}
	for i := lo + 2; i <= hi; i++ {
		if elem = ps.copyTree(elem); elem == nil {
			return nil, errERETooLarge
		}
		t = &ereTree{op: ereAlt, left: cat(t, elem)}
	}
	return cat(before, t), ps.grow(max(1, hi-lo)) // the ? or * node and the nested ones
}

// copyTree copies a tree as glibc's duplicate_tree does: every node marked
// copied, none optional; nil when the copy would be too large.
func (ps *ereParser) copyTree(t *ereTree) *ereTree {
	if ps.grow(treeSize(t)) != nil {
		return nil
	}
	return copyNodes(t)
}

func copyNodes(t *ereTree) *ereTree {
	if t == nil {
		return nil
	}
	c := *t
	c.copied, c.optional = true, false
	c.left, c.right = copyNodes(t.left), copyNodes(t.right)
	return &c
}

// treeSize is the number of NFA nodes a tree numbers to.
func treeSize(t *ereTree) int {
	if t == nil {
		return 0
	}
	n := treeSize(t.left) + treeSize(t.right)
	switch t.op {
	case ereCat:
		return n
	case ereGroup:
		return n + 2
	}
	return n + 1
}

// bracket reads a bracket expression after its "[" (parse_bracket_exp).
// A backslash in it is an ordinary byte; under REG_ICASE it reads the
// uppercased regex, so [a-z] is [A-Z] and [Z-a] an error.
func (ps *ereParser) bracket() (*ereTree, *ereError) {
	set := &byteSet{}
	negated := false
	tok, width := ps.bracketToken()
	if tok == bracketEnd {
		return nil, syntaxError("unterminated [")
	}
	if tok == bracketNot {
		negated = true
		ps.i += width
		if tok, width = ps.bracketToken(); tok == bracketEnd {
			return nil, syntaxError("unterminated [")
		}
	}
	if tok == bracketClose {
		tok = bracketByte // a "]" first is an ordinary byte
	}
	first := true
	for {
		lo, err := ps.bracketElement(tok, width, first)
		if err != nil {
			return nil, err
		}
		first = false
		tok, width = ps.bracketToken()
		isRange := false
		if lo.kind != ':' && lo.kind != '=' {
			if tok == bracketEnd {
				return nil, syntaxError("unterminated [")
			}
			if tok == bracketRange {
				ps.i += width
				tok2, width2 := ps.bracketToken()
				switch tok2 {
				case bracketEnd:
					return nil, syntaxError("unterminated [")
				case bracketClose: // a "-" last is an ordinary byte
					ps.i -= width
					tok = bracketByte
				default:
					isRange = true
					hi, err := ps.bracketElement(tok2, width2, true)
					if err != nil {
						return nil, err
					}
					tok, width = ps.bracketToken()
					if err := addRange(set, lo, hi); err != nil {
						return nil, err
					}
				}
			}
		}
		if !isRange {
			if err := lo.addTo(set, ps.foldCase); err != nil {
				return nil, err
			}
		}
		if tok == bracketEnd {
			return nil, syntaxError("unterminated [")
		}
		if tok == bracketClose {
			break
		}
	}
	ps.i += width
	if negated {
		negate(set)
	}
	return ps.leaf(set)
}

type bracketTokenKind uint8

const (
	bracketEnd bracketTokenKind = iota
	bracketByte
	bracketRange  // -
	bracketClose  // ]
	bracketNot    // ^
	bracketSymbol // [: [= [.
)

// bracketToken is the token at ps.i inside brackets and its width
// (peek_token_bracket).
func (ps *ereParser) bracketToken() (bracketTokenKind, int) {
	if ps.i == len(ps.p) {
		return bracketEnd, 0
	}
	switch ps.byteAt(ps.i) {
	case '[':
		if ps.i+1 < len(ps.p) {
			if c2 := ps.byteAt(ps.i + 1); c2 == ':' || c2 == '=' || c2 == '.' {
				return bracketSymbol, 2
			}
		}
	case '-':
		return bracketRange, 1
	case ']':
		return bracketClose, 1
	case '^':
		return bracketNot, 1
	}
	return bracketByte, 1
}

// bracketItem is one element of a bracket expression: a byte (kind 0),
// or a [:class:], [=equivalence=] or [.collating.] (kind ':', '=', '.').
type bracketItem struct {
	kind byte
	c    byte
	name string
}

func (ps *ereParser) bracketElement(tok bracketTokenKind, width int, acceptHyphen bool) (bracketItem, *ereError) {
	start := ps.i
	ps.i += width
	if tok == bracketSymbol {
		return ps.bracketSymbol(ps.byteAt(start + 1))
	}
	if tok == bracketRange && !acceptHyphen {
		// A "-" that starts no range must be last (glibc: REG_ERANGE).
		if next, _ := ps.bracketToken(); next != bracketClose {
			return bracketItem{}, syntaxError("invalid range end in [")
		}
	}
	return bracketItem{c: ps.byteAt(start)}, nil
}

// bracketSymbol reads the name of [:name:], [=name=] or [.name.] up to its
// closing delimiter and "]" (parse_bracket_symbol): at most 31 bytes.
func (ps *ereParser) bracketSymbol(delim byte) (bracketItem, *ereError) {
	const unterminated = "unterminated [: [= or [. in ["
	if ps.i == len(ps.p) {
		return bracketItem{}, syntaxError(unterminated)
	}
	name := make([]byte, 0, 8)
	for {
		if len(name) >= 32 {
			return bracketItem{}, syntaxError(unterminated)
		}
		ch := ps.byteAt(ps.i)
		if delim == ':' {
			ch = ps.p[ps.i] // a class name is read as written
		}
		ps.i++
		if ps.i == len(ps.p) {
			return bracketItem{}, syntaxError(unterminated)
		}
		if ch == delim && ps.byteAt(ps.i) == ']' {
			break
		}
		name = append(name, ch)
	}
	ps.i++
	return bracketItem{kind: delim, name: string(name)}, nil
}

// byteOf is the byte a collating element stands for in the C locale:
// only one-byte names exist.
func (it bracketItem) byteOf() (byte, *ereError) {
	if it.kind == 0 {
		return it.c, nil
	}
	if len(it.name) != 1 {
		return 0, syntaxError("invalid collating element [" + string(it.kind) + clip(it.name) + string(it.kind) + "]")
	}
	return it.name[0], nil
}

func (it bracketItem) addTo(set *byteSet, foldCase bool) *ereError {
	if it.kind != ':' {
		c, err := it.byteOf()
		set.add(c)
		return err
	}
	name := it.name
	if foldCase && (name == "upper" || name == "lower") {
		name = "alpha"
	}
	if !addClass(set, name) {
		return syntaxError("unknown character class [:" + clip(it.name) + ":]")
	}
	return nil
}

// addRange adds lo-hi; in the C locale bytes collate in their order.
func addRange(set *byteSet, lo, hi bracketItem) *ereError {
	if lo.kind == ':' || lo.kind == '=' || hi.kind == ':' || hi.kind == '=' {
		return syntaxError("invalid range end in [")
	}
	a, err := lo.byteOf()
	if err != nil {
		return err
	}
	b, err := hi.byteOf()
	if err != nil {
		return err
	}
	if a > b {
		return syntaxError("invalid range end in [")
	}
	for c := int(a); c <= int(b); c++ {
		set.add(byte(c))
	}
	return nil
}

// compileRuleRegex compiles a rule's regex, or says why it cannot.
func compileRuleRegex(pattern string, foldCase bool) (*ere, string) {
	re, err := compileERE(pattern, foldCase)
	switch {
	case err == nil:
		return re, ""
	case err.kind == ereTooLarge:
		return nil, "regex " + clip(pattern) + " is too large (over " + strconv.Itoa(maxERENodes) + " nodes)"
	}
	return nil, "bad regex " + clip(pattern) + ": " + err.why
}

// clip shortens what a message quotes from a rules file.
func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func compileERE(pattern string, foldCase bool) (*ere, *ereError) {
	ps := &ereParser{p: pattern, foldCase: foldCase}
	ps.fetch()
	tree, err := ps.alternation(0)
	if err != nil {
		return nil, err
	}
	re := &ere{nmatch: min(ps.groups+1, 10), subexp: make([]int, ps.groups)}
	for i := range re.subexp {
		re.subexp[i] = i
	}
	re.mergeNestedGroups(tree)
	re.number(tree)
	end := re.add(ereNode{op: ereEnd})
	re.init = end
	if tree != nil {
		re.link(tree, end)
		re.init = tree.first
	}
	if !re.cloneAfterAnchors() {
		return nil, errERETooLarge
	}
	re.prepare()
	return re, nil
}

// mergeNestedGroups drops a group that is all of its parent group, which
// then reports for both (glibc's optimize_subexps, a preorder walk that
// goes on into what it just linked in, so "((((a))))" keeps groups 1, 3).
func (re *ere) mergeNestedGroups(t *ereTree) {
	if t == nil {
		return
	}
	if t.op == ereGroup && t.left != nil && t.left.op == ereGroup {
		re.subexp[t.left.group] = re.subexp[t.group]
		t.left = t.left.left
	}
	re.mergeNestedGroups(t.left)
	re.mergeNestedGroups(t.right)
}

func (re *ere) add(n ereNode) int {
	n.next, n.edests, n.orig = -1, [2]int{-1, -1}, -1
	re.nodes = append(re.nodes, n)
	return len(re.nodes) - 1
}

// number gives the tree's NFA nodes glibc's numbers: postorder, a group
// as its open node, its body, its close node (calc_first after
// lower_subexps).
func (re *ere) number(t *ereTree) {
	if t == nil {
		return
	}
	if t.op == ereGroup {
		t.first = re.add(ereNode{op: ereOpen, group: t.group, optional: t.optional})
		re.number(t.left)
		t.last = re.add(ereNode{op: ereClose, group: t.group, optional: t.optional})
		return
	}
	re.number(t.left)
	re.number(t.right)
	if t.op == ereCat {
		t.first = t.left.first
		return
	}
	n := ereNode{op: t.op, cond: t.cond, copied: t.copied}
	if t.set != nil {
		n.set = *t.set
	}
	t.first = re.add(n)
	re.plural = re.plural || t.op == ereAlt || t.op == ereStar
}

// link sets every node's successors, next being what follows t
// (calc_next and link_nfa_nodes).
func (re *ere) link(t *ereTree, next int) {
	n := &re.nodes[t.first]
	switch t.op {
	case ereCat:
		re.link(t.left, t.right.first)
		re.link(t.right, next)
	case ereGroup:
		body := t.last
		if t.left != nil {
			body = t.left.first
			re.link(t.left, t.last)
		}
		n.edests[0] = body
		re.nodes[t.last].edests[0] = next
	case ereStar:
		re.link(t.left, t.first)
		re.setEdests(t.first, t.left.first, next)
	case ereAlt:
		l, r := next, next
		if t.left != nil {
			l = t.left.first
			re.link(t.left, next)
		}
		if t.right != nil {
			r = t.right.first
			re.link(t.right, next)
		}
		re.setEdests(t.first, l, r)
	case ereAnchor:
		n.edests[0] = next
	default:
		n.next = next
	}
}

// setEdests gives node two ε-moves, in ascending order, as glibc's node
// sets keep them: a fork prefers its lower-numbered way.
func (re *ere) setEdests(node, a, b int) {
	if a > b {
		a, b = b, a
	}
	if a == b {
		b = -1
	}
	re.nodes[node].edests = [2]int{a, b}
}

func (n *ereNode) epsilon() bool { return n.op >= ereOpen }

// cloneAfterAnchors retraces glibc's calc_eclosure, which computes the
// ε-closure of every node by number, depth first along its ε-moves, and
// lets each anchor it meets the first time clone the nodes it reaches, each
// clone carrying the anchor's condition. The order matters: it numbers the
// clones. A closure that ran into one still being computed (an ε-loop) is
// not kept unless it was asked for at the top, so glibc computes it again
// each time it meets the node, which nested optional repetitions make
// exponential; the retrace counts those steps. False when glibc would make
// too many nodes, or take too many steps.
func (re *ere) cloneAfterAnchors() bool {
	if len(re.nodes) > maxERENodes {
		return false
	}
	const (
		unknown uint8 = iota
		pending
		known
	)
	state := make([]uint8, maxERENodes+1) // cloneClosure keeps within
	steps := 0
	// closure returns whether x's closure came out complete; ok false
	// when the bounds are exceeded.
	var closure func(x int, top bool) (complete, ok bool)
	closure = func(x int, top bool) (bool, bool) {
		if steps++; steps > maxEREClosureSteps {
			return false, false
		}
		state[x] = pending
		n := re.nodes[x]
		if n.cond != 0 && n.edests[0] >= 0 && !re.nodes[n.edests[0]].copied && !re.cloneClosure(x, x, x, n.cond) {
			return false, false
		}
		complete := true
		for _, d := range re.nodes[x].edests {
			switch {
			case d < 0:
			case state[d] == pending:
				complete = false
			case state[d] == unknown:
				c, ok := closure(d, false)
				if !ok {
					return false, false
				}
				complete = complete && c
			}
		}
		state[x] = known
		if !complete && !top {
			state[x] = unknown
		}
		return complete, true
	}
	for x := 0; x < len(re.nodes); x++ {
		if state[x] == unknown {
			if _, ok := closure(x, true); !ok {
				return false
			}
		}
	}
	return true
}

// cloneClosure is glibc's duplicate_node_closure: it clones the ε-path
// from org (whose clone is clone) onwards, forks included, adding cond
// and the conditions of anchors met on the way.
func (re *ere) cloneClosure(org, clone, root int, cond uint8) bool {
	for {
		if len(re.nodes) > maxERENodes { // checked before a node's clone is used
			return false
		}
		o := re.nodes[org]
		switch {
		case o.edests[0] < 0: // a node that consumes, or the end
			re.nodes[clone].next = o.next
			return true
		case o.edests[1] < 0:
			dest := o.edests[0]
			re.nodes[clone].edests = [2]int{-1, -1}
			if org == root && clone != org { // back at the anchor: a loop
				re.nodes[clone].edests[0] = dest
				return true
			}
			cond |= o.cond
			d := re.cloneNode(dest, cond)
			re.nodes[clone].edests[0] = d
			org, clone = dest, d
		default:
			re.nodes[clone].edests = [2]int{-1, -1}
			d := re.findClone(o.edests[0], cond)
			if d < 0 {
				d = re.cloneNode(o.edests[0], cond)
				re.insertEdest(clone, d)
				if !re.cloneClosure(o.edests[0], d, root, cond) {
					return false
				}
			} else {
				re.insertEdest(clone, d)
			}
			d = re.cloneNode(o.edests[1], cond)
			re.insertEdest(clone, d)
			org, clone = o.edests[1], d
		}
	}
}

func (re *ere) cloneNode(org int, cond uint8) int {
	o := re.nodes[org]
	c := re.add(ereNode{op: o.op, set: o.set, group: o.group, optional: o.optional, cond: cond | o.cond, copied: true})
	re.nodes[c].orig = org
	return c
}

// findClone finds a clone of org with exactly cond among the clones made
// so far, the newest first (search_duplicated_node).
func (re *ere) findClone(org int, cond uint8) int {
	for x := len(re.nodes) - 1; x > 0 && re.nodes[x].copied; x-- {
		if re.nodes[x].orig == org && re.nodes[x].cond == cond {
			return x
		}
	}
	return -1
}

func (re *ere) insertEdest(node, d int) {
	e := &re.nodes[node].edests
	if e[0] < 0 {
		e[0] = d
	} else {
		re.setEdests(node, e[0], d)
	}
}

// prepare computes what matching needs. A state is a set of nodes, a
// bitset of re.words words; the set a node leads to by ε-moves, and the
// set of nodes leading to it, are computed once here (2 × nodes² bits:
// 250 KB at the limit, a few hundred bytes for a real rule), so the
// matcher works on words, not on moves.
func (re *ere) prepare() {
	n := len(re.nodes)
	w := (n + 63) / 64
	re.words = w
	re.ahead = make([]uint64, n*w)
	re.behind = make([]uint64, n*w)
	var stack []int
	for x := range n {
		ahead := re.ahead[x*w : (x+1)*w]
		stack = append(stack[:0], x)
		for len(stack) > 0 {
			y := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if has(ahead, y) {
				continue
			}
			ahead[y/64] |= 1 << (y % 64)
			for _, d := range re.nodes[y].edests {
				if d >= 0 {
					stack = append(stack, d)
					// A state leaves y out where its condition fails but
					// keeps d; a path through y then dies in the sift (an
					// anchor in a {m,n} copy: glibc clones nothing after it).
					prev := re.nodes[y].cond &^ ereNextConditions
					re.restarts = re.restarts || re.nodes[d].cond&prev != prev
				}
			}
		}
		for y := range members(ahead) {
			re.behind[y*w+x/64] |= 1 << (x % 64)
		}
	}
	re.kept = make([]uint64, int(erePrevContexts)*w)
	re.takers = make([]uint64, w)
	re.ends = make([]uint64, 2*w)
	for x, node := range re.nodes {
		bit := uint64(1) << (x % 64)
		for ctx := range erePrevContexts {
			if i := int(ctx); prevHolds(node.cond, ctx) {
				re.kept[i*w+x/64] |= bit
			}
		}
		switch {
		case node.op == ereConsume && node.cond&ereNextConditions == 0:
			re.takers[x/64] |= bit
		case node.op == ereEnd:
			for i, ctx := range []uint8{0, ereCtxNewline | ereCtxEnd} {
				if nextHolds(node.cond, ctx) {
					re.ends[i*w+x/64] |= bit
				}
			}
		}
	}
	for x := range members(re.ahead[re.init*w : (re.init+1)*w]) {
		switch node := &re.nodes[x]; {
		case !prevHolds(node.cond, 0):
		case node.op == ereConsume:
			for i := range re.firstByte {
				re.firstByte[i] |= node.set[i]
			}
		case node.op == ereEnd:
			re.canBeNull = true
		}
	}
}

// ereScratch is a matcher's memory, reused from one match to the next.
type ereScratch struct {
	mark     []uint32 // the walk: mark[x] == round when ε-node x was met since the last byte
	round    uint32
	threads  []ereThread // the consuming nodes of the state at hand
	next     []ereThread
	states   []uint64 // with groups: the match's states, a row of bits per position
	set      []uint64 // a state's worth of bits: reached (search), kept (sift)
	regs     []int
	prevRegs []int
	// endless is set when a match gave up where glibc's group walk goes
	// round forever (glibc hangs there; see README.md).
	endless bool
}

// ereThread is a node that may consume the next byte, and the start of
// the match it belongs to.
type ereThread struct{ node, start int }

func (sc *ereScratch) nextRound() {
	sc.round++
	if sc.round == 0 { // wrapped: old marks could pass for new ones
		clear(sc.mark)
		sc.round = 1
	}
}

// tipContext is what the name offers "^" and "\`" when a match starts at
// p: at its start tip, what regexec's flags leave there (REG_NOTBOL takes
// the newline context away).
func tipContext(p int, tip uint8) uint8 {
	if p == 0 {
		return tip
	}
	return 0
}

// byteContext is what the state after byte c offers the next nodes: glibc
// builds its state after a newline as if REG_NEWLINE were set, so a "^"
// reached there holds.
func byteContext(c byte) uint8 {
	if c == '\n' {
		return ereCtxNewline
	}
	return 0
}

// endContext is what position p of a name of n bytes offers "$" and "\'".
func endContext(p, n int) uint8 {
	if p == n {
		return ereCtxNewline | ereCtxEnd
	}
	return 0
}

// consumes tells whether node x takes byte c at p (check_node_accept; at
// the name's end glibc sees its terminating NUL).
func (re *ere) consumes(x int, s string, p int) bool {
	n := &re.nodes[x]
	c := byte(0)
	if p < len(s) {
		c = s[p]
	}
	return n.op == ereConsume && n.set.has(c) && nextHolds(n.cond, endContext(p, len(s)))
}

// cost is the work bound of one match on s: each phase meets each node at
// most once per position, for each start glibc drops (only with restarts).
func (re *ere) cost(s string) int {
	c := re.steps(s)
	if re.restarts {
		c *= len(s) + 1
	}
	return c
}

// steps is the work bound of one phase of a match on s; each position
// costs some work of its own, as two more nodes would.
func (re *ere) steps(s string) int { return (len(re.nodes) + 2) * (len(s) + 1) }

// match finds what glibc's regexec reports for s: the leftmost match, its
// longest extent, and its groups as glibc picks them. It returns the
// positions (pairs, -1 for a group that took no part), as many pairs as
// regexec fills (the match and up to 9 groups), or nil.
func (re *ere) match(s string, sc *ereScratch) []int {
	return re.matchWith(s, ereCtxNewline|ereCtxStart, sc)
}

// matchNotBOL is match as regexec with REG_NOTBOL finds it: "^" does not
// hold at s's start, "\`" still does. It is how a "gg" rule searches the
// rest of a name after a replacement, as tftpd-hpa 6.0 does.
func (re *ere) matchNotBOL(s string, sc *ereScratch) []int { return re.matchWith(s, ereCtxStart, sc) }

// matchWith is match where s's start offers tip (see tipContext).
func (re *ere) matchWith(s string, tip uint8, sc *ereScratch) []int {
	sc.endless = false
	if len(sc.mark) < len(re.nodes) {
		// Room for the regexes of a whole rules file, most of them small.
		sc.mark = make([]uint32, max(len(re.nodes), 64))
		sc.threads = make([]ereThread, 0, 16)
		sc.next = make([]ereThread, 0, 16)
	}
	if re.nmatch == 1 {
		start, end := re.search(s, 0, tip, true, sc)
		if start < 0 {
			return nil
		}
		sc.regs = append(sc.regs[:0], start, end)
		return sc.regs
	}
	// glibc drops a start whose states keep nothing once sifted (a path
	// through a node its condition took out of a state, see restarts) and
	// tries the next.
	for from := 0; ; {
		start := from
		if from > 0 || !re.anchored() { // else only 0 can start a match
			if start, _ = re.search(s, from, tip, false, sc); start < 0 {
				return nil
			}
		}
		if m, dropped := re.groups(s, start, tip, sc); !dropped {
			return m
		}
		from = start + 1
	}
}

// anchored tells whether only a match at the name's start is possible.
func (re *ere) anchored() bool {
	return !re.canBeNull && re.firstByte == byteSet{}
}

// keptIn is the set of nodes whose condition on what precedes holds in
// ctx: a state keeps those of the nodes it reaches (glibc filters a
// state, not the moves, so the nodes after a dropped one stay).
func (re *ere) keptIn(ctx uint8) []uint64 {
	i := int(ctx)
	return re.kept[i*re.words : (i+1)*re.words]
}

// endsAt is the set of end nodes that hold at p in a name of n bytes.
func (re *ere) endsAt(p, n int) []uint64 {
	if p == n {
		return re.ends[re.words:]
	}
	return re.ends[:re.words]
}

func (re *ere) aheadOf(x int) []uint64 { return re.ahead[x*re.words : (x+1)*re.words] }

// search finds the leftmost start from on of a match, and with wantEnd
// its longest end. It follows the states of all starts at once, each node
// taken by the earliest start that reaches it: a later one could only do
// the same from there.
func (re *ere) search(s string, from int, tip uint8, wantEnd bool, sc *ereScratch) (start, end int) {
	start, end = -1, -1
	// Locals, not sc's fields: no write barrier on each swap.
	threads, next := sc.threads[:0], sc.next[:0]
	seen := sc.bitset(re.words)
	for p := from; p <= len(s); p++ {
		if len(threads) == 0 && start < 0 && p > 0 && !re.canBeNull {
			for p < len(s) && !re.firstByte.has(s[p]) {
				p++
			}
			if p == len(s) {
				break
			}
		}
		clear(seen)
		next = next[:0]
		halt := -1
		if p > 0 {
			c := s[p-1]
			for _, t := range threads {
				if n := &re.nodes[t.node]; n.set.has(c) {
					next, halt = re.spread(n.next, t.start, byteContext(c), p, len(s), seen, next, halt)
				}
			}
		}
		// A new start, unless it would die at once: after the name's first
		// byte, what it consumes first is in firstByte (else it could only
		// match empty, canBeNull).
		if start < 0 && (p == 0 || re.canBeNull || p < len(s) && re.firstByte.has(s[p])) {
			next, halt = re.spread(re.init, p, tipContext(p, tip), p, len(s), seen, next, halt)
		}
		if halt >= 0 {
			if start < 0 || halt < start {
				start = halt
			}
			end = p
			k := len(next)
			for k > 0 && next[k-1].start > start {
				k--
			}
			next = next[:k]
		}
		threads, next = next, threads
		// Done when the start is sure: no earlier one is still going.
		if start >= 0 && (len(threads) == 0 || !wantEnd && threads[0].start == start) {
			break
		}
	}
	sc.threads, sc.next = threads, next
	return start, end
}

// spread adds to the state at p what node x leads to and seen does not
// hold yet, for the match starting at start: its consuming nodes as
// threads, appended to next. It returns halt, or start when it reaches an
// end node that holds at p.
func (re *ere) spread(x, start int, ctx uint8, p, n int, seen []uint64, next []ereThread, halt int) ([]ereThread, int) {
	if node := &re.nodes[x]; node.op == ereConsume && node.cond == 0 { // most moves: x alone
		if !has(seen, x) {
			seen[x/64] |= 1 << (x % 64)
			next = append(next, ereThread{x, start})
		}
		return next, halt
	}
	ahead, kept, ends := re.aheadOf(x), re.keptIn(ctx), re.endsAt(p, n)
	for i, word := range ahead {
		word &^= seen[i]
		seen[i] |= word
		word &= kept[i]
		if halt < 0 && word&ends[i] != 0 {
			halt = start
		}
		for word &= re.takers[i]; word != 0; word &= word - 1 {
			next = append(next, ereThread{i*64 + bits.TrailingZeros64(word), start})
		}
	}
	return next, halt
}

// groups runs the states of the match starting at start alone (glibc's
// check_matching from there), which gives its longest end, then finds
// its groups as glibc does: the states kept to what leads to that end
// when the regex forks, then walked. It returns nil when no match starts
// there or the walk fails, and dropped when the sift keeps nothing (glibc
// then tries the next start).
func (re *ere) groups(s string, start int, tip uint8, sc *ereScratch) (m []int, dropped bool) {
	w := re.words
	rows := (len(s) - start + 1) * w
	if cap(sc.states) < rows {
		sc.states = make([]uint64, rows)
	}
	sc.states = sc.states[:rows]
	end, last := -1, -1 // last: glibc's last_node, the lowest end node that holds at end
	for p := start; p <= len(s); p++ {
		row := sc.row(p-start, w)
		if p == start {
			copy(row, re.aheadOf(re.init))
			and(row, re.keptIn(tipContext(start, tip)))
		} else {
			clear(row)
			c := s[p-1]
			for x := range takers(sc.row(p-1-start, w), re.takers) {
				if n := &re.nodes[x]; n.set.has(c) {
					or(row, re.aheadOf(n.next))
				}
			}
			and(row, re.keptIn(byteContext(c)))
		}
		alive := false
		for i, word := range row {
			alive = alive || word != 0
			if word &= re.endsAt(p, len(s))[i]; word != 0 && end < p {
				end, last = p, i*64+bits.TrailingZeros64(word)
			}
		}
		if !alive {
			break
		}
	}
	if end < 0 {
		return nil, false
	}
	if re.plural {
		re.sift(s, start, end, last, sc)
		if !slices.ContainsFunc(sc.row(0, w), func(word uint64) bool { return word != 0 }) {
			return nil, true
		}
	}
	return re.walk(s, start, end, last, sc), false
}

func (sc *ereScratch) row(i, w int) []uint64 { return sc.states[i*w : (i+1)*w] }

// bitset is a scratch set of w words.
func (sc *ereScratch) bitset(w int) []uint64 {
	if cap(sc.set) < w {
		sc.set = make([]uint64, w)
	}
	return sc.set[:w]
}

func has(row []uint64, x int) bool { return row[x/64]&(1<<(x%64)) != 0 }

// members yields the nodes of a state row, ascending.
func members(row []uint64) iter.Seq[int] { return takers(row, row) }

// takers yields the nodes of a state row that are in mask, ascending.
func takers(row, mask []uint64) iter.Seq[int] {
	return func(yield func(int) bool) {
		for i, word := range row {
			for word &= mask[i]; word != 0; word &= word - 1 {
				if !yield(i*64 + bits.TrailingZeros64(word)) {
					return
				}
			}
		}
	}
}

// sift keeps in each state only the nodes that lead to last at end
// (sift_states_backward): at end, what reaches last by ε-moves; before,
// the nodes that consume their byte into a kept node, and what reaches
// them by ε-moves.
func (re *ere) sift(s string, start, end, last int, sc *ereScratch) {
	w := re.words
	reach := sc.bitset(w)
	and(sc.row(end-start, w), re.behind[last*w:(last+1)*w])
	for p := end - 1; p >= start; p-- {
		clear(reach)
		cur, next := sc.row(p-start, w), sc.row(p+1-start, w)
		for x := range takers(cur, re.takers) { // p < len(s): consumes is takers and set
			if n := &re.nodes[x]; n.set.has(s[p]) && has(next, n.next) {
				or(reach, re.behind[x*w:(x+1)*w])
			}
		}
		and(cur, reach)
	}
}

func and(row, mask []uint64) {
	for i := range row {
		row[i] &= mask[i]
	}
}

func or(row, mask []uint64) {
	for i := range row {
		row[i] |= mask[i]
	}
}

// walk reads the groups off the states as glibc's set_regs does: from the
// first node, an ε-node goes to its lowest-numbered successor in the state,
// or to the other one when that was already met since the last byte; a
// consuming node takes its byte. Open and close nodes note positions as
// they pass (update_regs). Like glibc it fails on a dead end. Where glibc
// goes round forever it stops: while no new node is met the walk is a
// function of the node alone, so more steps than nodes repeat forever.
// It also stops, as if so, after more of those steps in all than twice
// the work bound (fuzzing saw at most half of it), so a walk costs at most
// three times steps(s).
func (re *ere) walk(s string, start, end, last int, sc *ereScratch) []int {
	w := (len(re.nodes) + 63) / 64
	regs := fillRegs(sc.regs, 2*re.nmatch)
	regs[0], regs[1] = start, end
	prev := append(sc.prevRegs[:0], regs...)
	sc.regs, sc.prevRegs = regs, prev
	sc.nextRound() // marks the ε-nodes met since the last byte
	stale := 0     // ε-steps since one met a new node
	revisits := 2 * re.steps(s)
	for x, p := re.init, start; p <= end; {
		re.noteGroup(x, p, regs, prev)
		if p == end && x == last {
			break
		}
		n := &re.nodes[x]
		switch {
		case n.epsilon():
			if stale++; sc.mark[x] != sc.round {
				sc.mark[x], stale = sc.round, 0
			} else if revisits--; stale > len(re.nodes) || revisits < 0 {
				sc.endless = true
				return nil
			}
			row, to := sc.row(p-start, w), -1
			for _, d := range n.edests {
				if d < 0 || !has(row, d) {
					continue
				}
				if to < 0 {
					to = d
					continue
				}
				if sc.mark[to] == sc.round {
					to = d
				}
				break
			}
			x = to
		case re.consumes(x, s, p):
			x = n.next
			p++
			stale = 0
			sc.nextRound()
		default:
			x = -1
		}
		if x < 0 {
			return nil
		}
	}
	for i := range re.nmatch - 1 {
		if g := re.subexp[i]; g != i {
			regs[2*i+2], regs[2*i+3] = regs[2*g+2], regs[2*g+3]
		}
	}
	return regs
}

// noteGroup is glibc's update_regs at node x and position p.
func (re *ere) noteGroup(x, p int, regs, prev []int) {
	n := &re.nodes[x]
	r := 2 * (n.group + 1)
	if n.op != ereOpen && n.op != ereClose || r >= len(regs) {
		return
	}
	switch {
	case n.op == ereOpen:
		regs[r], regs[r+1] = p, -1
	case regs[r] < p:
		regs[r+1] = p
		copy(prev, regs)
	case n.optional && prev[r] != -1:
		// An empty pass through an optional group after a real one, as
		// in (a?)*: glibc puts back the groups of the real one.
		copy(regs, prev)
	default:
		regs[r+1] = p
	}
}

func fillRegs(b []int, n int) []int {
	if cap(b) < n {
		b = make([]int, n)
	}
	b = b[:n]
	for i := range b {
		b[i] = -1
	}
	return b
}
