//go:build !noproxy

// --forward-client: an origin behind a URL link learns who asks (Forwarded
// per address family, X-TFTP-Client-MAC on a directly attached link), for
// GETs and relayed PUTs; a response that varies on that is cached per
// client, one that does not stays shared, "Vary: *" is never reused, and
// without the flag the origin hears of no client at all.
package main

import (
	"bytes"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// perClientBody is what the test origin answers a client it was told of:
// bytes that name the client, so each client's transfer proves whose
// response it got.
func perClientBody(forwarded, mac string) []byte {
	return bytes.Repeat([]byte("for "+forwarded+" mac "+mac+"|"), 1500)
}

// servePerClient answers each request with the body of the client its
// headers name, varying on vary (none when empty), fresh for 5 minutes.
func servePerClient(vary string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if vary != "" {
			w.Header().Set("Vary", vary)
		}
		w.Header().Set("Cache-Control", "max-age=300")
		serveBody(perClientBody(r.Header.Get("Forwarded"), r.Header.Get("X-TFTP-Client-MAC")))(w, r)
	}
}

// seen returns the values of header in every request the origin got for
// path, in order; "-" for a request without it.
func (u *upstream) seen(path, header string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, r := range u.requests {
		if r.URL.EscapedPath() == path {
			v := strings.Join(r.Header.Values(header), ",")
			if v == "" {
				v = "-"
			}
			out = append(out, v)
		}
	}
	return out
}

// getAs fetches name from server as the repo's client sending from local,
// and checks the bytes it received.
func getAs(t *testing.T, server netip.AddrPort, local netip.Addr, name string, want []byte) {
	t.Helper()
	res, err := tftpGet(server, name, clientOptions{local: local, blksize: 1468, windowsize: 4})
	if err != nil {
		t.Fatalf("get %s from %s: %v", name, local, err)
	}
	assertSame(t, res.data, want)
}

// curlGet fetches a tftp:// URL with curl (prefixed, to run it elsewhere)
// and checks the bytes it received.
func curlGet(t *testing.T, prefix []string, url string, want []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	argv := append(slices.Clone(prefix), needClient(t, "curl"), "-sS", "--max-time", "30", "-o", out, url)
	if msg, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("curl %s: %v\n%s", url, err, msg)
	}
	assertSame(t, readFile(t, out), want)
}

// TestForwardClientVaryingResponseIsCachedPerClient: on a dual-stack
// socket, curl from 127.0.0.1 (a v4-mapped client, told as IPv4), the
// repo's client from 127.0.0.2 and from ::1 each get their own response;
// the origin saw each one's Forwarded and, over loopback, no MAC; the first
// client asking again is served from the cache.
func TestForwardClientVaryingResponseIsCachedPerClient(t *testing.T) {
	up := startUpstream(t)
	up.handle("/per-client", servePerClient("Forwarded"))
	ts := startServer(t, "::", "--forward-client")
	ts.link(t, "up", up.URL+"/")
	port := ts.addr.Port()
	v4, v6 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), netip.AddrPortFrom(netip.IPv6Loopback(), port)

	curlGet(t, nil, "tftp://127.0.0.1:"+strconv.Itoa(int(port))+"/up/per-client", perClientBody("for=127.0.0.1", ""))
	getAs(t, v4, netip.MustParseAddr("127.0.0.2"), "up/per-client", perClientBody("for=127.0.0.2", ""))
	getAs(t, v6, netip.IPv6Loopback(), "up/per-client", perClientBody(`for="[::1]"`, ""))
	getAs(t, v4, netip.MustParseAddr("127.0.0.1"), "up/per-client", perClientBody("for=127.0.0.1", ""))

	want := []string{"for=127.0.0.1", "for=127.0.0.2", `for="[::1]"`}
	if got := up.seen("/per-client", "Forwarded"); !slices.Equal(got, want) {
		t.Fatalf("the origin saw Forwarded %q, want %q (the last request from the cache)", got, want)
	}
	if got := up.seen("/per-client", "X-TFTP-Client-MAC"); !slices.Equal(got, []string{"-", "-", "-"}) {
		t.Fatalf("the origin saw X-TFTP-Client-MAC %q over loopback, want none", got)
	}
}

// TestForwardClientVaryDecidesSharing: two clients, then the first again,
// against origins that vary in different ways. A response that does not
// vary, or varies only on headers no request of ours carries (Cookie) or
// carries alike for everyone (User-Agent), is fetched once and shared; one
// that varies on Forwarded (any case, among others) once per client; one
// with "Vary: *" is never reused.
func TestForwardClientVaryDecidesSharing(t *testing.T) {
	first, second := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	for _, c := range []struct {
		vary string
		// fetchedFor is whose request the origin answered for each
		// transfer; the origin got one request per distinct fetch.
		fetchedFor [3]netip.Addr
		requests   int
	}{
		{"", [3]netip.Addr{first, first, first}, 1},
		{"Cookie, User-Agent", [3]netip.Addr{first, first, first}, 1},
		{"accept-language, FORWARDED", [3]netip.Addr{first, second, first}, 2},
		{"*", [3]netip.Addr{first, second, first}, 3},
		{"Forwarded, *", [3]netip.Addr{first, second, first}, 3},
	} {
		t.Run("vary "+c.vary, func(t *testing.T) {
			up := startUpstream(t)
			up.handle("/f", servePerClient(c.vary))
			ts := startServer(t, "127.0.0.1", "--forward-client")
			ts.link(t, "up", up.URL+"/")
			for i, client := range []netip.Addr{first, second, first} {
				getAs(t, ts.addr, client, "up/f", perClientBody("for="+c.fetchedFor[i].String(), ""))
			}
			if got, _ := up.count("/f"); got != c.requests {
				t.Fatalf("%d origin requests, want %d", got, c.requests)
			}
		})
	}
}

// TestForwardClientWaiterOfAnotherClientsVariantAsksAgain: a second
// client whose request joins the first one's, still waiting for the
// origin's headers, finds the answer varies per client and gets its own.
func TestForwardClientWaiterOfAnotherClientsVariantAsksAgain(t *testing.T) {
	up := startUpstream(t)
	arrived, release := make(chan struct{}), make(chan struct{})
	perClient := servePerClient("Forwarded")
	up.handle("/slow", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Forwarded") == "for=127.0.0.1" {
			close(arrived)
			<-release
		}
		perClient(w, r)
	})
	ts := startServer(t, "127.0.0.1", "--forward-client")
	ts.link(t, "up", up.URL+"/")
	results := make(chan *clientResult, 2)
	errs := make(chan error, 2)
	get := func(client string) {
		res, err := tftpGet(ts.addr, "up/slow", clientOptions{local: netip.MustParseAddr(client)})
		results <- res
		errs <- err
	}
	go get("127.0.0.1")
	<-arrived
	go get("127.0.0.2")
	awaitJoined(t, ts.cache, up.URL+"/slow", 1)
	close(release)
	got := map[string]bool{}
	for range 2 {
		res, err := <-results, <-errs
		if err != nil {
			t.Fatal(err)
		}
		got[string(res.data)] = true
	}
	for _, client := range []string{"for=127.0.0.1", "for=127.0.0.2"} {
		if !got[string(perClientBody(client, ""))] {
			t.Errorf("no client received the response for %s", client)
		}
	}
	if got, want := up.seen("/slow", "Forwarded"), []string{"for=127.0.0.1", "for=127.0.0.2"}; !slices.Equal(got, want) {
		t.Fatalf("the origin saw Forwarded %q, want %q", got, want)
	}
}

// awaitJoined waits until n requests wait for the one pending under key.
func awaitJoined(t *testing.T, c *cache, key string, n int) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		joined := 0
		if call := c.pending[key]; call != nil {
			joined = call.joined
		}
		c.mu.Unlock()
		if joined >= n {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d of %d requests wait for %s after 10 s", joined, n, key)
		}
	}
}

// TestForwardClientOffTellsNothing: without the flag no request carries a
// Forwarded or X-TFTP-Client-MAC header, and a response varying on
// Forwarded is shared, as every request is the same.
func TestForwardClientOffTellsNothing(t *testing.T) {
	up := startUpstream(t)
	up.handle("/f", servePerClient("Forwarded"))
	ts := startServer(t, "127.0.0.1")
	ts.link(t, "up", up.URL+"/")
	getAs(t, ts.addr, netip.MustParseAddr("127.0.0.1"), "up/f", perClientBody("", ""))
	getAs(t, ts.addr, netip.MustParseAddr("127.0.0.2"), "up/f", perClientBody("", ""))
	if got := up.seen("/f", "Forwarded"); !slices.Equal(got, []string{"-"}) {
		t.Fatalf("the origin saw Forwarded %q, want one request without it", got)
	}
	if got := up.seen("/f", "X-TFTP-Client-MAC"); !slices.Equal(got, []string{"-"}) {
		t.Fatalf("the origin saw X-TFTP-Client-MAC %q, want one request without it", got)
	}
}

// TestForwardClientUploadRelayCarriesClient: an upload relayed as a PUT
// tells the origin who uploads, from curl over IPv4 and the repo's client
// over IPv6; the origin stored the exact bytes each sent.
func TestForwardClientUploadRelayCarriesClient(t *testing.T) {
	up := startUpstream(t)
	store := &putStore{bodies: map[string][]byte{}, reqs: map[string]*http.Request{}}
	up.handle("/from-curl", store.handler(http.StatusCreated))
	up.handle("/from-client", store.handler(http.StatusCreated))
	ts := startServer(t, "::", "--forward-client", "--upload-http")
	ts.link(t, "up", up.URL+"/")
	port := ts.addr.Port()

	curlData, clientData := randomBytes(70_000, 220), randomBytes(30_001, 221)
	local := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(local, curlData, 0o644); err != nil {
		t.Fatal(err)
	}
	url := "tftp://127.0.0.1:" + strconv.Itoa(int(port)) + "/up/from-curl"
	if msg, err := exec.Command(needClient(t, "curl"), "-sS", "--max-time", "30", "-T", local, url).CombinedOutput(); err != nil {
		t.Fatalf("curl -T %s: %v\n%s", url, err, msg)
	}
	if _, err := tftpPut(netip.AddrPortFrom(netip.IPv6Loopback(), port), "up/from-client", clientData, clientOptions{tsize: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, forwarded string
		data            []byte
	}{
		{"/from-curl", "for=127.0.0.1", curlData},
		{"/from-client", `for="[::1]"`, clientData},
	} {
		body, req := store.get(t, c.path)
		assertSame(t, body, c.data)
		if got := req.Header.Values("Forwarded"); !slices.Equal(got, []string{c.forwarded}) {
			t.Errorf("PUT %s: Forwarded %q, want %q", c.path, got, c.forwarded)
		}
		if got := req.Header.Get("X-TFTP-Client-MAC"); got != "" {
			t.Errorf("PUT %s: X-TFTP-Client-MAC %q over loopback", c.path, got)
		}
	}
}

// TestForwardClientMACInOwnNetworkNamespace: a client on a directly
// attached link (a veth pair, its MAC address set by the test) is told to
// the origin by its MAC address, over IPv4 and IPv6, and a response
// varying on X-TFTP-Client-MAC is cached for that MAC: the client asking
// again over either family is served from the cache, while a local client,
// whose MAC is unknown, gets a response of its own.
func TestForwardClientMACInOwnNetworkNamespace(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		reexecInNetns(t, "TestForwardClientMACInOwnNetworkNamespace")
		return
	}
	const mac = "02:42:c0:00:02:08"
	inClient := macClientNamespace(t, mac)
	up := startUpstream(t)
	up.handle("/by-mac", servePerClient("X-TFTP-Client-MAC"))
	ts := startServer(t, "::", "--forward-client")
	ts.link(t, "up", up.URL+"/")
	port := strconv.Itoa(int(ts.addr.Port()))

	forClient := perClientBody("for=192.0.2.2", mac)
	curlGet(t, inClient, "tftp://192.0.2.1:"+port+"/up/by-mac", forClient)
	curlGet(t, inClient, "tftp://[2001:db8::1]:"+port+"/up/by-mac", forClient)
	getAs(t, netip.MustParseAddrPort("192.0.2.1:"+port), netip.MustParseAddr("192.0.2.1"), "up/by-mac", perClientBody("for=192.0.2.1", ""))

	if got, want := up.seen("/by-mac", "X-TFTP-Client-MAC"), []string{mac, "-"}; !slices.Equal(got, want) {
		t.Fatalf("the origin saw X-TFTP-Client-MAC %q, want %q", got, want)
	}
	if got, want := up.seen("/by-mac", "Forwarded"), []string{"for=192.0.2.2", "for=192.0.2.1"}; !slices.Equal(got, want) {
		t.Fatalf("the origin saw Forwarded %q, want %q", got, want)
	}
	// Over IPv6 the origin hears the client's IPv6 address and the same MAC.
	up.handle("/v6", servePerClient("Forwarded"))
	curlGet(t, inClient, "tftp://[2001:db8::1]:"+port+"/up/v6", perClientBody(`for="[2001:db8::2]"`, mac))
	if got, want := up.seen("/v6", "X-TFTP-Client-MAC"), []string{mac}; !slices.Equal(got, want) {
		t.Fatalf("over IPv6 the origin saw X-TFTP-Client-MAC %q, want %q", got, want)
	}
}

// TestForwardClientOffAllocatesNothing: without --forward-client (a nil
// identity) the cache key is the URL itself and the headers are untouched,
// without an allocation.
func TestForwardClientOffAllocatesNothing(t *testing.T) {
	variants := map[string]varySpec{} // as the cache's is without the flag
	url, h := "http://127.0.0.1/f", http.Header{}
	var key string
	allocs := testing.AllocsPerRun(100, func() {
		key = entryKey(url, variant(variants[url], nil))
		(*clientIdentity)(nil).tell(h)
	})
	if allocs != 0 || key != url || len(h) != 0 {
		t.Fatalf("%v allocations, key %q, headers %v; want none, the URL, none", allocs, key, h)
	}
}

// TestForwardedValue: RFC 7239's node for each address family.
func TestForwardedValue(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.1":     "for=192.0.2.1",
		"2001:db8::1":   `for="[2001:db8::1]"`,
		"fe80::1%veth0": `for="[fe80::1]"`,
	} {
		if got := (&clientIdentity{addr: netip.MustParseAddr(addr)}).forwarded(); got != want {
			t.Errorf("%s: %s, want %s", addr, got, want)
		}
	}
}

// FuzzParseVary: any Vary lines are read without a panic; a field split
// across lines at its commas means the same; a bit is set only when its
// name (or "*") is in the field.
func FuzzParseVary(f *testing.F) {
	for _, seed := range []string{"Forwarded", "x-tftp-client-mac, Accept-Encoding", "*", " ,\t,Forwarded ,", "Cookie", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, field string) {
		spec := parseVary([]string{field})
		if split := parseVary(strings.Split(field, ",")); split != spec {
			t.Fatalf("%q: %b as one line, %b split at commas", field, spec, split)
		}
		lower := strings.ToLower(field)
		if spec&varyForwarded != 0 && !strings.Contains(lower, "forwarded") ||
			spec&varyClientMAC != 0 && !strings.Contains(lower, "x-tftp-client-mac") ||
			spec&varyAny != 0 && !strings.Contains(field, "*") {
			t.Fatalf("%q: %b names what the field does not", field, spec)
		}
	})
}
