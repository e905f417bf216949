/* hello: the smallest native Twizzler program. DEBUG_PRINT goes to twzd's console, which is the
 * program's stderr and twzd.log. Run it under twzd: `twzrun ./hello`. */
#include <twz/sys.h>

int main(void)
{
	static const char msg[] = "hello from a native Twizzler program\n";
	return sys_debug_print(msg, sizeof(msg) - 1) == 0 ? 0 : 1;
}
