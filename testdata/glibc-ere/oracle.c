/*
 * oracle answers, for ere_test.go, what glibc's regcomp and regexec make of
 * a regex and a name, called as tftpd-hpa calls them for a rule:
 * regcomp(REG_EXTENDED, plus REG_ICASE for an "i" rule) in the C locale
 * (tftpd-hpa 5.2 never calls setlocale), then regexec with 10 pmatch
 * slots and no flags, or REG_NOTBOL as a "gg" rule (tftpd-hpa 6.0)
 * searches the rest of a name after a replacement. It is the exact oracle
 * for ere.go's engine; the test builds it with gcc and talks to it over a
 * pipe.
 *
 * Requests on stdin, one after another until end of input:
 *   u8 flags (1: REG_ICASE, 2: also run regexec, else compile only,
 *            4: regexec with REG_NOTBOL)
 *   u32 pattern length, the pattern, u32 name length, the name
 * Lengths are little-endian; pattern and name hold no NUL byte.
 * Each answer on stdout:
 *   'E', u32 length, regerror's text    the pattern does not compile
 *   'C'                                 it compiles (compile-only request)
 *   'N'                                 regexec found no match
 *   'M', 10 x (i32 rm_so, i32 rm_eo)    the match and groups 1 to 9
 * A request that takes glibc more than 20 s ends the process (SIGALRM), so
 * a hang in glibc shows as the pipe closing, never as a stuck test.
 */
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int read_full(void *buf, size_t n)
{
	return fread(buf, 1, n, stdin) == n;
}

static void put_u32(uint32_t v)
{
	unsigned char b[4] = { v, v >> 8, v >> 16, v >> 24 };
	fwrite(b, 1, 4, stdout);
}

/* read_string reads a u32 length and that many bytes into a fresh,
 * NUL-terminated buffer; NULL at end of input. */
static char *read_string(void)
{
	unsigned char b[4];
	if (!read_full(b, 4))
		return NULL;
	uint32_t n = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
	char *s = malloc((size_t)n + 1);
	if (s == NULL || !read_full(s, n)) {
		free(s);
		return NULL;
	}
	s[n] = '\0';
	return s;
}

int main(void)
{
	int flags;
	while ((flags = getchar()) != EOF) {
		char *pattern = read_string();
		char *name = pattern ? read_string() : NULL;
		if (name == NULL)
			return 1;
		alarm(20);
		regex_t rx;
		int rc = regcomp(&rx, pattern, REG_EXTENDED | (flags & 1 ? REG_ICASE : 0));
		if (rc != 0) {
			char text[256];
			size_t len = regerror(rc, &rx, text, sizeof text);
			len = len > sizeof text ? sizeof text - 1 : len - 1;
			putchar('E');
			put_u32(len);
			fwrite(text, 1, len, stdout);
		} else if (!(flags & 2)) {
			putchar('C');
			regfree(&rx);
		} else {
			regmatch_t pmatch[10];
			if (regexec(&rx, name, 10, pmatch, flags & 4 ? REG_NOTBOL : 0) != 0) {
				putchar('N');
			} else {
				putchar('M');
				for (int i = 0; i < 10; i++) {
					put_u32((uint32_t)pmatch[i].rm_so);
					put_u32((uint32_t)pmatch[i].rm_eo);
				}
			}
			regfree(&rx);
		}
		alarm(0);
		fflush(stdout);
		free(pattern);
		free(name);
	}
	return 0;
}
