# Drive an interactive zsh in a pseudo-terminal, press TAB after a command line and print every
# completion candidate the completion system offers, one per line between "<<" and ">>".
#   zsh -f zsh_complete.zsh SCRIPT 'command line'   SCRIPT is sourced (the `eval` install)
#   zsh -f zsh_complete.zsh DIR 'command line'      DIR holds _llmctl, put on $fpath (packages)
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PROMPT= RPROMPT=; unsetopt prompt_sp zle_bracketed_paste 2>/dev/null'
if [[ -d $1 ]]; then
  zpty -w z "fpath=(${(q)1} \$fpath); autoload -U compinit && compinit -u -D"
else
  zpty -w z 'autoload -U compinit && compinit -u -D'
  zpty -w z "source ${(q)1}"
fi
# report candidates instead of inserting them
zpty -w z 'compadd () { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi; typeset -a __hits; builtin compadd -A __hits "$@"; local r=$?; (( $#__hits )) && print -l -- "<<" $__hits ">>"; return $r }'
zpty -w z 'zstyle ":completion:*" list-grouped false; zstyle ":completion:*" insert-tab false'
zpty -w z 'print __RE""ADY__'
zpty -r z line '*__READY__*'
zpty -w -n z "$2"$'\t'
zpty -w z $'\C-u''print __DO""NE__'
zpty -r z out '*__DONE__*'
print -r -- "$out"
zpty -d z
