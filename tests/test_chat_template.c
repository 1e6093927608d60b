#include "prefopt/chat_template.h"
int main(void) { return 0; }
