// ere_test.go proves that ere.go reads rule regexes as tftpd-hpa does:
// glibc itself is the oracle. FuzzERE runs each regex and name through
// ere.go and through glibc's regcomp and regexec (testdata/glibc-ere, a
// small C helper built with gcc and driven over a pipe), and wants the
// same verdict on the regex, the same match and the same groups 1 to 9.
// It excludes only what README.md lists as differences, each class told
// apart by the regex's structure, never by the answer.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// glibcOracle is the helper process, one per test process (each fuzzing
// worker starts its own), built and started on first use.
var glibcOracle struct {
	once sync.Once
	mu   sync.Mutex
	in   io.WriteCloser
	out  *bufio.Reader
	why  string // why there is none
}

// needGlibcOracle skips the test without gcc, or fails it under CI=true.
func needGlibcOracle(t testing.TB) {
	t.Helper()
	o := &glibcOracle
	o.once.Do(func() { o.why = startGlibcOracle() })
	if o.why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(o.why + " (CI=true)")
		}
		t.Skip(o.why)
	}
}

func startGlibcOracle() string {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "gcc not found: the glibc oracle cannot be built"
	}
	dir, err := os.MkdirTemp("", "glibc-ere-")
	if err != nil {
		return err.Error()
	}
	// The running helper keeps its file open; the folder can go now.
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "oracle")
	if out, err := exec.Command(gcc, "-O2", "-o", bin, "testdata/glibc-ere/oracle.c").CombinedOutput(); err != nil {
		return fmt.Sprintf("building the glibc oracle: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	in, err := cmd.StdinPipe()
	if err != nil {
		return err.Error()
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err.Error()
	}
	if err := cmd.Start(); err != nil {
		return err.Error()
	}
	// It exits when this process does: its stdin closes.
	glibcOracle.in, glibcOracle.out = in, bufio.NewReader(out)
	return ""
}

// glibcAnswer is what glibc makes of a regex and a name.
type glibcAnswer struct {
	refused string // regerror's text when regcomp fails
	matched bool
	pmatch  [20]int // the match and groups 1 to 9, as regexec fills them
}

var errGlibcGone = errors.New("the glibc oracle gave no answer: it hung (20 s) or crashed on this input")

// askGlibc compiles pattern with glibc, and with run also matches name,
// with REG_NOTBOL when notBOL.
func askGlibc(pattern, name string, foldCase, run, notBOL bool) (glibcAnswer, error) {
	o := &glibcOracle
	o.mu.Lock()
	defer o.mu.Unlock()
	flags := byte(0)
	if foldCase {
		flags |= 1
	}
	if run {
		flags |= 2
	}
	if notBOL {
		flags |= 4
	}
	req := []byte{flags}
	for _, s := range []string{pattern, name} {
		req = binary.LittleEndian.AppendUint32(req, uint32(len(s)))
		req = append(req, s...)
	}
	var a glibcAnswer
	if _, err := o.in.Write(req); err != nil {
		return a, errGlibcGone
	}
	kind, err := o.out.ReadByte()
	if err != nil {
		return a, errGlibcGone
	}
	switch kind {
	case 'E':
		var n uint32
		if err := binary.Read(o.out, binary.LittleEndian, &n); err != nil {
			return a, errGlibcGone
		}
		text := make([]byte, n)
		if _, err := io.ReadFull(o.out, text); err != nil {
			return a, errGlibcGone
		}
		a.refused = string(text)
	case 'M':
		var raw [20]int32
		if err := binary.Read(o.out, binary.LittleEndian, &raw); err != nil {
			return a, errGlibcGone
		}
		a.matched = true
		for i, v := range raw {
			a.pmatch[i] = int(v)
		}
	case 'C', 'N':
	default:
		return a, fmt.Errorf("the glibc oracle answered %q", kind)
	}
	return a, nil
}

// consumesAfterDollar reports a node that consumes a byte under "$"'s
// condition, as in a$.b: glibc's first pass lets it take a newline, then
// drops such a match or keeps it depending on the groups (README.md).
func consumesAfterDollar(re *ere) bool {
	for _, n := range re.nodes {
		if n.op == ereConsume && n.cond&ereBeforeNewline != 0 {
			return true
		}
	}
	return false
}

// compareWithGlibc checks one regex and name against glibc's regexec: as
// a rule matches a name, and with REG_NOTBOL, as a "gg" rule searches the
// rest of a name after a replacement.
func compareWithGlibc(t *testing.T, pattern, name string, foldCase bool) {
	t.Helper()
	compareWithGlibcAs(t, pattern, name, foldCase, false)
	compareWithGlibcAs(t, pattern, name, foldCase, true)
}

// compareWithGlibcAs checks one regex and name against regexec, with
// REG_NOTBOL when notBOL.
func compareWithGlibcAs(t *testing.T, pattern, name string, foldCase, notBOL bool) {
	t.Helper()
	re, err := compileERE(pattern, foldCase)
	if err != nil && err.kind != ereSyntax {
		// One of the deliberate refusals (ereErrorKind lists them all, and
		// README.md each one): whatever glibc says, nothing to compare.
		return
	}
	var got []int
	sc := &ereScratch{}
	run := err == nil
	if run {
		if notBOL {
			got = re.matchNotBOL(name, sc)
		} else {
			got = re.match(name, sc)
		}
		// Excluded classes (README.md, "Differences from tftpd-hpa"):
		// where glibc's group walk goes round forever, and a byte after
		// "$" on a name with a newline. Only the verdict on the regex is
		// compared there.
		run = !sc.endless && !(strings.Contains(name, "\n") && consumesAfterDollar(re))
	}
	want, gerr := askGlibc(pattern, name, foldCase, run, notBOL)
	if gerr != nil {
		t.Fatalf("%q on %q (fold %v, notbol %v): %v", pattern, name, foldCase, notBOL, gerr)
	}
	switch {
	case err != nil && want.refused == "":
		t.Fatalf("%q (fold %v): ere.go refuses it (%s), glibc compiles it", pattern, foldCase, err.why)
	case err != nil:
		return
	case want.refused != "":
		t.Fatalf("%q (fold %v): glibc refuses it (%s), ere.go compiles it", pattern, foldCase, want.refused)
	case !run:
		return
	case (got != nil) != want.matched:
		t.Fatalf("%q on %q (fold %v, notbol %v): ere.go %v, glibc %v", pattern, name, foldCase, notBOL, got, glibcMatch(want))
	case got == nil:
		return
	}
	for i := range want.pmatch {
		g := -1
		if i < len(got) {
			g = got[i]
		}
		if g != want.pmatch[i] {
			t.Fatalf("%q on %q (fold %v, notbol %v): ere.go %v, glibc %v", pattern, name, foldCase, notBOL, got, glibcMatch(want))
		}
	}
}

// glibcMatch is glibc's answer in ere.go's form, for messages.
func glibcMatch(a glibcAnswer) []int {
	if !a.matched {
		return nil
	}
	m := a.pmatch[:]
	for len(m) > 2 && m[len(m)-1] == -1 && m[len(m)-2] == -1 {
		m = m[:len(m)-2]
	}
	return m
}

// FuzzERE compares ere.go with glibc on any regex and name (bytes, not
// characters; NUL excepted: neither a rules line nor a request holds one).
func FuzzERE(f *testing.F) {
	for _, seed := range []struct {
		pattern, name string
		foldCase      bool
	}{
		{"a|ab", "abc", false}, {"(a|ab)(c|bcd)(d*)", "abcd", false}, {"^(Boot/([^/]+/)*)([^/]+[.](com|efi))$", "Boot/x64/a.com", false},
		{"[]a-c]+", "x]b]", false}, {"(a*)+b", "aab", false}, {"x{2,3}y?", "xxxxy", false}, {"[[:alpha:]]*", "ab1", false},
		{"(a|b)*c", "ababc", false}, {"^$", "", false}, {"(^a|b$)+", "ab", false}, {"a{0}b", "b", false}, {"(|0)*0*", "0", false},
		{"0{00}", "0", false}, {"((a)|b)*", "ab", false}, {"(a$)|(a)", "a", false}, {"(^a){1,2}", "aa", false},
		{"(a?)*", "aa", false}, {"a.^b", "a\nb", false}, {"[a-z]+\\a", "Hi a", true}, {"[[:upper:]_-]+", "a_B-", true},
		{"\\w+\\s\\S", "x_1 y", false}, {"[\x80-\xff]+", "a\xe9\xff", false}, {"a{,2}}", "aaa}", false},
	} {
		f.Add(seed.pattern, seed.name, seed.foldCase)
	}
	f.Fuzz(func(t *testing.T, pattern, name string, foldCase bool) {
		if strings.IndexByte(pattern+name, 0) >= 0 || len(name) > 200 {
			return
		}
		needGlibcOracle(t)
		compareWithGlibc(t, pattern, name, foldCase)
	})
}

// TestEREMatchesGlibcCornerCases pins down glibc's answers to the corner
// cases of its regex dialect (checked against glibc when gcc is there):
// the matched positions, "no match", or "refused".
func TestEREMatchesGlibcCornerCases(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		foldCase      bool
		want          string
	}{
		{"0{00}", "0", false, "[0 0]"},
		{"a{,3}", "aaaa", false, "[0 3]"},
		{"a{1}{2}", "aaa", false, "[0 2]"},
		{"a{1\\,2}", "aa", false, "[0 2]"}, // an escaped comma still separates
		{"a{", "a{", false, "refused"},     // a "{" always opens an interval
		{"a{x}", "a{x}", false, "refused"},
		{"{", "{", false, "refused"},
		{"a}", "a}", false, "[0 2]"},
		{"a**", "aa", false, "[0 2]"},
		{"(*a)", "a", false, "refused"},
		{"^*", "a", false, "refused"},
		{"a|*b", "b", false, "refused"},
		{"()", "x", false, "[0 0 0 0]"},
		{"(|a)", "a", false, "[0 1 0 1]"},
		{"[]a]", "]", false, "[0 1]"},
		{"[a-]", "-", false, "[0 1]"},
		{"[[.a.]]", "a", false, "[0 1]"},
		{"[[=a=]]", "a", false, "[0 1]"},
		{"[[.ab.]]", "a", false, "refused"},
		{"[[:alpha:]-z]", "a", false, "refused"},
		{"[[:alpha:]-]", "-", false, "[0 1]"},
		{"[\\w]+", "w\\x", false, "[0 2]"}, // a backslash in brackets is itself
		{"\\w+", "a_b-", false, "[0 3]"},
		{"\\x\\.", "x.", false, "[0 2]"},
		{"[\x80-\xff]+", "a\x80\xff", false, "[1 3]"},
		{"[\xff-a]", "a", false, "refused"},
		{"[a-z]+", "ABC", true, "[0 3]"},
		{"[Z-a]", "Z", false, "[0 1]"},
		{"[Z-a]", "Z", true, "refused"}, // [Z-A] once uppercased
		{"[A-z]", "[", true, "no match"},
		{"[[:lower:]]+", "aBc", true, "[0 3]"},
		{"\\a", "a", true, "no match"}, // kept lowercase, matched against "A"
		{"\\A", "a", true, "[0 1]"},
		{"(a*)*", "b", false, "[0 0 0 0]"},
		{"(a*)+", "aa", false, "[0 2 0 2]"},
		{"(|0)*0*", "0", false, "[0 1 0 1]"},
		{"(a|ab)(c|bcd)(d*)", "abcd", false, "[0 4 0 1 1 4 4 4]"},
		{"(a)*", "aaa", false, "[0 3 2 3]"},
		{"((a)|b)*", "ab", false, "[0 2 1 2 0 1]"}, // group 2 keeps the first pass
		{"(a){0,3}", "aa", false, "[0 2 1 2]"},
		{"((a?))*", "aa", false, "[0 2 1 2 1 2]"},
		{"(a*)*(a)", "aa", false, "[0 2 0 1 1 2]"},
		{"(a$)|(a)", "a", false, "[0 1 -1 -1 0 1]"},
		{"(^a){2}", "aa", false, "no match"},
		{"(^a){1,2}", "aa", false, "no match"},
		{"a.^b", "a\nb", false, "[0 3]"},
		{"^b", "\nb", false, "no match"},
	} {
		re, err := compileERE(c.pattern, c.foldCase)
		got := "refused"
		if err == nil {
			got = "no match"
			if m := re.match(c.name, &ereScratch{}); m != nil {
				got = fmt.Sprint(m)
			}
		}
		if got != c.want {
			t.Errorf("%q on %q (fold %v): %s, want %s", c.pattern, c.name, c.foldCase, got, c.want)
		}
	}
	needGlibcOracle(t)
	for _, p := range []string{"0{00}", "a{1\\,2}", "(a|ab)(c|bcd)(d*)", "((a)|b)*", "(a$)|(a)", "(^a){1,2}", "[Z-a]", "\\a"} {
		compareWithGlibc(t, p, "aabcdZ", false)
		compareWithGlibc(t, p, "aabcdZ", true)
	}
}

// TestEREMatchesNotBOL: as regexec with REG_NOTBOL, the way a "gg" rule
// searches the rest of a name after a replacement, "^" does not hold at
// the start while "\`" still does. Checked against glibc when gcc is there.
func TestEREMatchesNotBOL(t *testing.T) {
	for _, c := range []struct{ pattern, name, want string }{
		{"^a", "ab", "no match"},
		{"\\`a", "ab", "[0 1]"},
		{"(^|x)a", "xa", "[0 2 0 1]"},
		{"^|b", "ab", "[1 2]"},
		{"a$", "ba", "[1 2]"},
		{"x*", "ab", "[0 0]"},
		{"(a)(b)", "aab", "[1 3 1 2 2 3]"},
		{"^b", "a\nb", "no match"},
	} {
		re, err := compileERE(c.pattern, false)
		if err != nil {
			t.Fatal(err.why)
		}
		got := "no match"
		if m := re.matchNotBOL(c.name, &ereScratch{}); m != nil {
			got = fmt.Sprint(m)
		}
		if got != c.want {
			t.Errorf("%q on %q: %s, want %s", c.pattern, c.name, got, c.want)
		}
	}
	needGlibcOracle(t)
	for _, p := range []string{"^a", "\\`a", "(^|x)a", "^|b", "(^a|b)+", "a.^b", "(a|ab)(c|bcd)(d*)", "b*", "^*a", "(^)*"} {
		for _, name := range []string{"ab\nabcd", "", "\n", "a", "b\na"} {
			compareWithGlibcAs(t, p, name, false, true)
		}
	}
}

// TestEREStopsWhereGlibcLoops: glibc's group walk never ends on (()*^a){2}
// against "aa" (regexec hangs); ere.go gives up within its work bound.
func TestEREStopsWhereGlibcLoops(t *testing.T) {
	re, err := compileERE("(()*^a){2}", false)
	if err != nil {
		t.Fatal(err.why)
	}
	sc := &ereScratch{}
	if m := re.match("aa", sc); m != nil || !sc.endless {
		t.Fatalf("match %v, endless %v", m, sc.endless)
	}
}

// TestERERefusesOnPurpose: each deliberate refusal has its kind.
func TestERERefusesOnPurpose(t *testing.T) {
	for _, c := range []struct {
		pattern string
		kind    ereErrorKind
	}{
		{"(a)\\1", ereBackReference}, {"a\\b", ereWordBoundary}, {"\\<a", ereWordBoundary},
		{"a{256}", ereCountOver255}, {"a{1,300}", ereCountOver255}, {"a{99}{99}", ereTooLarge},
		{strings.Repeat("(", 1200) + "a" + strings.Repeat(")", 1200), ereTooLarge}, {"a)", ereUnmatchedClose},
		{"a{2,1}", ereSyntax}, {"(a", ereSyntax}, {"[a", ereSyntax},
	} {
		if _, err := compileERE(c.pattern, false); err == nil || err.kind != c.kind {
			t.Errorf("%.40q: %+v, want kind %d", c.pattern, err, c.kind)
		}
	}
}
