/* objdemo: a native Twizzler program that exercises the object system calls through the
 * generated stubs of twz/sys.h, success and error paths, and maps objects the Twizzler way:
 * a slot from the view allocator, then plain loads and stores (mapped on first touch).
 *
 * Prints `ok <what>` or `FAIL <what>: got X want Y` per check; exits 0 only if all pass.
 * Run it under twzd: `twzrun ./objdemo`.
 */
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

static int failures;

static void check(const char *what, long got, long want)
{
	if(got == want) {
		printf("ok %s\n", what);
	} else {
		printf("FAIL %s: got %ld want %ld\n", what, got, want);
		failures++;
	}
}

static void check_true(const char *what, int cond)
{
	check(what, cond ? 1 : 0, 1);
}

/* A kuid no earlier run under the same twzd used, so ZERONONCE and HASHDATA IDs are fresh. */
static objid_t fresh_kuid(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return MKID((uint64_t)ts.tv_sec, ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec);
}

static objid_t create(int flags)
{
	objid_t id = 0;
	long r = sys_ocreate(0, 0, flags, &id);
	if(r != 0)
		check("create helper", r, 0);
	return id;
}

/* The object's data base (slot offset 0x1000) in a freshly allocated slot. */
static char *map(objid_t id, uint32_t flags)
{
	long slot = twz_rt_slot_alloc(ID_LO(id), ID_HI(id), flags);
	if(slot < 0) {
		check("slot alloc", slot, 0);
		return NULL;
	}
	return (char *)(uintptr_t)((uint64_t)slot << 30) + OBJ_NULLPAGE_SIZE;
}

static void console(void)
{
	static const char msg[] = "objdemo: hello from a native program\n";
	static char big[DEBUG_PRINT_MAX + 1];
	check("NULL", sys_null(0), 0);
	check("DEBUG_PRINT", sys_debug_print(msg, sizeof(msg) - 1), 0);
	check("DEBUG_PRINT over 1024 bytes", sys_debug_print(big, sizeof(big)), -EINVAL);
}

static void creation(void)
{
	objid_t kuid = fresh_kuid(), a = 0, b = 0;
	int zflags = MIP_DFL_READ | TWZ_SYS_OC_ZERONONCE;
	check("OCREATE DFL_READ|DFL_WRITE", sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE, &a), 0);
	check_true("OCREATE returns an ID", a != 0);
	check("OCREATE ZERONONCE", sys_ocreate(kuid, 0, zflags, &b), 0);
	check("OCREATE ZERONONCE again", sys_ocreate(kuid, 0, zflags, &b), -EEXIST);
	check("ODELETE ZERONONCE object", sys_odelete(b, TWZ_SYS_OD_IMMEDIATE), 0);

	objid_t h = 0;
	check("OCREATE HASHDATA", sys_ocreate(fresh_kuid(), 0, MIP_DFL_READ | MIP_HASHDATA, &h), 0);
	check_true("OCREATE HASHDATA returns an ID", h != 0);

	objid_t p = 0;
	struct kernel_ostat st;
	check("OCREATE PERSIST", sys_ocreate(0, 0, MIP_DFL_READ | TWZ_SYS_OC_PERSIST_, &p), 0);
	check("OSTAT persistent object", sys_ostat(p, OS_TYPE_OBJ, 0, &st), 0);
	check_true("OSTAT reports OS_FLAGS_PERSIST", st.flags & OS_FLAGS_PERSIST);
	check("ODELETE persistent object", sys_odelete(p, TWZ_SYS_OD_IMMEDIATE), 0);

	/* A source object's data is copied into the new object. */
	char *src = map(a, VE_READ | VE_WRITE);
	if(src)
		strcpy(src, "copied at creation");
	objid_t c = 0;
	check("OCREATE with a source", sys_ocreate(0, a, MIP_DFL_READ | MIP_DFL_WRITE, &c), 0);
	char *copy = map(c, VE_READ);
	check_true("OCREATE source data copied", copy && !strcmp(copy, "copied at creation"));

	check("OCREATE bad retid", sys_ocreate(0, 0, MIP_DFL_READ, (objid_t *)(uintptr_t)0x10), -EFAULT);
	check("OCREATE unknown flags", sys_ocreate(0, 0, MIP_DFL_READ | 0x80000, &b), -EINVAL);
}

static void deletion_and_stat(void)
{
	objid_t id = create(MIP_DFL_READ | MIP_DFL_WRITE);
	char *data = map(id, VE_READ | VE_WRITE);
	if(data)
		data[0] = 'x'; /* first touch maps it: the process now holds a reference */

	struct kernel_ostat_page pg;
	check("OSTAT PAGE", sys_ostat(id, OS_TYPE_PAGE, OBJ_NULLPAGE_SIZE / PAGE_SIZE, &pg), 0);
	check("OSTAT PAGE pgnr", (long)pg.pgnr, OBJ_NULLPAGE_SIZE / PAGE_SIZE);
	check_true("OSTAT PAGE written page exists", pg.flags & OS_PAGE_EXIST);

	struct kernel_ostat st;
	check("ODELETE IMMEDIATE", sys_odelete(id, TWZ_SYS_OD_IMMEDIATE), 0);
	check("OSTAT deleted but mapped", sys_ostat(id, OS_TYPE_OBJ, 0, &st), 0);
	check_true("OSTAT reports OS_FLAGS_HIDDEN", st.flags & OS_FLAGS_HIDDEN);
	check_true("deleted object still readable", data && data[0] == 'x');

	objid_t nobody = MKID(0x0bad0bad0bad0badull, 0x1);
	check("ODELETE unknown ID", sys_odelete(nobody, 0), -ENOENT);
	check("OSTAT unknown ID", sys_ostat(nobody, OS_TYPE_OBJ, 0, &st), -ENOENT);
	check("OSTAT bad type", sys_ostat(create(MIP_DFL_READ), 9, 0, &st), -EINVAL);
}

static void control(void)
{
	objid_t id = create(MIP_DFL_READ | MIP_DFL_WRITE);
	struct kernel_ostat st;
	check("OCTL CACHE_MODE", sys_octl(id, OCO_CACHE_MODE, 0, PAGE_SIZE, OC_CM_WC), 0);
	check("OSTAT cache mode", sys_ostat(id, OS_TYPE_OBJ, 0, &st) ? -1 : (long)st.cache_mode, OC_CM_WC);
	check("OCTL MAP", sys_octl(id, OCO_MAP, 0, 2 * PAGE_SIZE, 0), 0);
	check("OCTL bad op", sys_octl(id, 7, 0, 0, 0), -EINVAL);
}

static void ties(void)
{
	objid_t parent = create(MIP_DFL_READ), child = create(MIP_DFL_READ);
	check("OTIE", sys_otie(parent, child, 0), 0);
	check("OTIE untie", sys_otie(parent, child, OTIE_UNTIE), 0);
	check("OTIE untie twice", sys_otie(parent, child, OTIE_UNTIE), -ENOENT);
	check("OTIE to itself", sys_otie(parent, parent, 0), -EPERM);
}

static void copying(void)
{
	objid_t src = create(MIP_DFL_READ | MIP_DFL_WRITE), dst = create(MIP_DFL_READ | MIP_DFL_WRITE);
	char *s = map(src, VE_READ | VE_WRITE), *d = map(dst, VE_READ);
	if(s)
		strcpy(s + PAGE_SIZE, "page two of the source");
	/* Offsets are slot offsets: the source's second data page is at 0x2000. */
	check("OCOPY page-aligned",
	  sys_ocopy(&dst, &src, OBJ_NULLPAGE_SIZE, OBJ_NULLPAGE_SIZE + PAGE_SIZE, PAGE_SIZE, 0), 0);
	check_true("OCOPY data visible through the slot", d && !strcmp(d, "page two of the source"));
	check("OCOPY misaligned", sys_ocopy(&dst, &src, OBJ_NULLPAGE_SIZE + 8, OBJ_NULLPAGE_SIZE,
	                            PAGE_SIZE, 0),
	  -EINVAL);
}

static void invalidation(void)
{
	struct sys_invalidate_op op = {
		.id = KSO_CURRENT_VIEW,
		.offset = (uint64_t)SLOT_ALLOC_START << 30,
		.length = OBJ_MAXSIZE,
		.flags = KSOI_VALID | KSOI_CURRENT,
	};
	check("INVL_KSO current view", sys_invl_kso(&op, 1), 1);
	check("INVL_KSO op result", op.result, KSO_INVL_RES_OK);
	check("INVL_KSO bad pointer", sys_invl_kso((struct sys_invalidate_op *)(uintptr_t)0x10, 1),
	  -EFAULT);
}

static void kconf(void)
{
	long reset = sys_kconf(KCONF_RDRESET, 0);
	check_true("KCONF RDRESET non-zero", reset != 0);
	check("KCONF RDRESET stable", sys_kconf(KCONF_RDRESET, 0), reset);
	check("KCONF bad cmd", sys_kconf(77, 0), -EINVAL);
	check("unknown syscall", twz_syscall6(TWZ_LINUX_NR(200), 0, 0, 0, 0, 0, 0), -ENOSYS);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	console();
	creation();
	deletion_and_stat();
	control();
	ties();
	copying();
	invalidation();
	kconf();
	if(failures)
		printf("FAIL objdemo: got %d failed checks want 0\n", failures);
	else
		printf("ok objdemo: all checks passed\n");
	return failures ? 1 : 0;
}
