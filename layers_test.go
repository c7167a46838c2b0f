// The code map is a fact the build checks: the package's files form layers,
// and a file uses names only from the files below it (as Go's own
// go/build/deps_test.go holds the standard library's imports to a table).
// go/parser and go/types tell which file's names each file uses; README.md's
// code map must list the same files in the same order.
package main

import (
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// codeLayers lists the source files from the top down: each may use the
// names of the files after it, never of those before it. Files of one build
// only (cache.go and origin.go with proxy support, noproxy.go and sha256.go
// without) stand where their build puts them.
var codeLayers = []string{
	"main.go",      // flags, config, logger, signals, startup
	"systemd.go",   // socket activation and sd_notify, for main.go
	"server.go",    // the listener: read, dispatch, admit, supersede, release, shut down
	"access.go",    // --allow, --deny, --upload-allow: who may ask, who may write
	"session.go",   // one transfer's whole life, from admission to its summary line
	"hook.go",      // --hook: the program run after each transfer, queued and bounded
	"cache.go",     // the HTTP cache: URL → stored bytes
	"upload.go",    // how an upload lands: confined, atomic, counted and hashed
	"noproxy.go",   // the cache's stand-in in a build without proxy support
	"origin.go",    // talking HTTP to origins: GET, PUT, status codes
	"metrics.go",   // the counters and their Prometheus exposition on GET /metrics
	"proxy.go",     // requested name → local file or URL
	"remap.go",     // --map-file rules
	"ere.go",       // the rules' regex engine
	"netascii.go",  // netascii conversion both ways, around a source and a sink
	"window.go",    // the sending and receiving engines (RFC 7440)
	"transport.go", // a transfer's datagram path: its own socket or the shared one
	"batch.go",     // batched sends: UDP GSO, sendmmsg
	"sha256.go",    // SHA-256 for the build without crypto/sha256
	"tftp.go",      // the wire codec: packets, options, errors
}

// sharedNames may be used from any file: configuration that travels in one
// struct, and small helpers every layer needs.
var sharedNames = map[string]bool{
	"config":  true, // main.go: built from the flags, read by every layer
	"version": true, // main.go: stamped at build time
}

// crossFileUse is one file using a name declared in another.
type crossFileUse struct {
	user, owner, name string
	at                token.Position
}

// crossFileUses type-checks the package's source files for the build tags
// given and returns every use of a package-level name, a method or a field
// from another file than its own.
func crossFileUses(t *testing.T, tags string) []crossFileUse {
	t.Helper()
	args := []string{"list", "-export", "-deps", "-f", "{{.ImportPath}}={{.Export}}"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	out, err := exec.Command("go", append(args, ".")...).Output()
	if err != nil {
		t.Fatalf("go list -export: %v", err)
	}
	exports := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if path, file, ok := strings.Cut(line, "="); ok && file != "" {
			exports[path] = file
		}
	}
	files, err := exec.Command("go", "list", "-tags", tags, "-f", `{{join .GoFiles "\n"}}`, ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	fset := token.NewFileSet()
	var parsed []*ast.File
	for _, name := range strings.Fields(string(files)) {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, f)
	}
	conf := types.Config{Importer: importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		file, ok := exports[path]
		if !ok {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(file)
	})}
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}, Selections: map[*ast.SelectorExpr]*types.Selection{}}
	pkg, err := conf.Check("main", fset, parsed, info)
	if err != nil {
		t.Fatalf("type-checking with tags %q: %v", tags, err)
	}
	// A field or a method counts as a use of the declaration it belongs
	// to: config.timeout is config's.
	type span struct {
		from, to token.Pos
		name     string
	}
	var decls []span
	for _, f := range parsed {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				name := d.Name.Name
				if d.Recv != nil {
					recv := d.Recv.List[0].Type
					if star, ok := recv.(*ast.StarExpr); ok {
						recv = star.X
					}
					if id, ok := recv.(*ast.Ident); ok {
						name = id.Name + "." + name
					}
				}
				decls = append(decls, span{d.Pos(), d.End(), name})
			case *ast.GenDecl:
				for _, sp := range d.Specs {
					switch sp := sp.(type) {
					case *ast.TypeSpec:
						decls = append(decls, span{sp.Pos(), sp.End(), sp.Name.Name})
					case *ast.ValueSpec:
						for _, id := range sp.Names {
							decls = append(decls, span{id.Pos(), id.End(), id.Name})
						}
					}
				}
			}
		}
	}
	declaredIn := func(pos token.Pos) string {
		for _, d := range decls {
			if d.from <= pos && pos < d.to {
				return d.name
			}
		}
		return ""
	}
	var uses []crossFileUse
	note := func(at token.Pos, obj types.Object) {
		if obj == nil || obj.Pkg() != pkg || !obj.Pos().IsValid() {
			return
		}
		if v, ok := obj.(*types.Var); ok && !v.IsField() && obj.Parent() != pkg.Scope() {
			return // a local variable or parameter
		}
		if _, ok := obj.(*types.Const); ok && obj.Parent() != pkg.Scope() {
			return
		}
		if tn, ok := obj.(*types.TypeName); ok && obj.Parent() != pkg.Scope() && !tn.IsAlias() {
			return // a local type
		}
		user, owner := fset.Position(at), fset.Position(obj.Pos())
		if user.Filename != owner.Filename {
			uses = append(uses, crossFileUse{filepath.Base(user.Filename), filepath.Base(owner.Filename), declaredIn(obj.Pos()), user})
		}
	}
	for id, obj := range info.Uses {
		note(id.Pos(), obj)
	}
	for sel, s := range info.Selections {
		note(sel.Sel.Pos(), s.Obj())
	}
	return uses
}

// TestCodeMapHoldsLayering: no file uses a name of a file above it in
// codeLayers, in either build; every source file is in the table; README's
// code map lists the table's files in its order.
func TestCodeMapHoldsLayering(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command")
	}
	rank := map[string]int{}
	for i, f := range codeLayers {
		rank[f] = i
	}
	for _, tags := range []string{"", "noproxy"} {
		var upward []string
		for _, u := range crossFileUses(t, tags) {
			ru, okU := rank[u.user]
			ro, okO := rank[u.owner]
			switch {
			case !okU:
				t.Errorf("%s is not in codeLayers: give it its place", u.user)
				rank[u.user] = -1
			case !okO:
				t.Errorf("%s is not in codeLayers: give it its place", u.owner)
				rank[u.owner] = -1
			case ro < ru && !sharedNames[u.name]:
				upward = append(upward, fmt.Sprintf("%s:%d uses %s of %s, a file above it", u.user, u.at.Line, u.name, u.owner))
			}
		}
		sort.Strings(upward)
		upward = slices.Compact(upward)
		for _, v := range upward {
			t.Errorf("tags %q: %s", tags, v)
		}
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, codeMap, ok := strings.Cut(string(readme), "\n## Code map\n")
	if !ok {
		t.Fatal("README.md has no \"## Code map\" section")
	}
	codeMap, _, _ = strings.Cut(codeMap, "\n## ")
	var listed []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z0-9_]+\\.go)` \\|").FindAllStringSubmatch(codeMap, -1) {
		listed = append(listed, m[1])
	}
	if !slices.Equal(listed, codeLayers) {
		t.Errorf("README.md's code map lists %v,\nthe layering table %v", listed, codeLayers)
	}
}
